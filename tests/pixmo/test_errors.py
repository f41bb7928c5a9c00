"""User-error types (``pixmo.errors``): one line naming file, record and field; an OSError
as the path it failed on; a config error under the name the user typed."""

from __future__ import annotations

import errno

import pytest

from pixmo.errors import ConfigError, PixmoError


@pytest.mark.parametrize(("where", "line"), [
    ({}, "bad value"),
    ({"file": "points.jsonl"}, "points.jsonl: bad value"),
    ({"file": "points.jsonl", "record": 12}, "points.jsonl, record 12: bad value"),
    ({"file": "points.jsonl", "record": "k1", "field": "label"},
     "points.jsonl, record k1, field label: bad value"),
    ({"field": "label"}, "field label: bad value"),
])
def test_one_line_names_where(where, line):
    error = PixmoError("bad value", **where)
    assert error.one_line() == str(error) == line
    assert isinstance(error, ValueError)


def test_os_error_names_the_path_it_failed_on():
    error = PixmoError.from_os_error(FileNotFoundError(errno.ENOENT, "No such file or directory",
                                                       "a.txt"))
    assert str(error) == "a.txt: No such file or directory"
    moved = PixmoError.from_os_error(OSError(errno.EISDIR, "Is a directory", "src", None, "dst"))
    assert str(moved) == "dst: Is a directory"  # a move: the destination
    assert str(PixmoError.from_os_error(OSError("no errno"))) == "no errno"


def test_located_replaces_only_what_it_is_given():
    error = PixmoError("bad", file="a", record=3, field="x").located(file="b.yaml")
    assert (error.file, error.record, error.field) == ("b.yaml", 3, "x")
    config = ConfigError("must be >= 1, got 0", field="C.n").located(file="run.yaml")
    assert type(config) is ConfigError and str(config) == "run.yaml: C.n must be >= 1, got 0"


def test_config_error_reads_as_the_setting_the_user_typed():
    error = ConfigError("must be >= 1, got 0", field="ShardConfig.max_samples")
    assert str(error) == "ShardConfig.max_samples must be >= 1, got 0"
    named = error.named({"ShardConfig.max_samples": "--shard-samples"})
    assert str(named) == "--shard-samples must be >= 1, got 0"
    assert error.named({"Other.x": "--x"}) is error
    plain = PixmoError("bad", field="ShardConfig.max_samples")
    assert plain.named({"ShardConfig.max_samples": "--shard-samples"}) is plain
    assert str(ConfigError("is required")) == "is required"
