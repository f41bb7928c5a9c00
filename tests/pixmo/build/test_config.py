"""The build's configuration: read from a mapping, checked, and recorded as plain JSON."""

from __future__ import annotations

import json

import pytest

from pixmo.build.config import BuildConfig
from pixmo.config import from_mapping
from pixmo.errors import ConfigError, PixmoError


def test_a_build_config_round_trips_through_its_json():
    cfg = from_mapping(BuildConfig, {"raw_dir": "raw", "transcribe": False,
                                     "shards": {"max_samples": 7}}, "config")
    assert cfg.shards.max_samples == 7 and cfg.shards.prefix == "pixmo"  # defaults filled in
    plain = cfg.to_json()
    assert json.loads(json.dumps(plain)) == plain
    assert plain["raw_dir"] == "raw" and plain["transcribe"] is False
    assert from_mapping(BuildConfig, plain, "config") == cfg


def test_a_bad_value_is_reported_under_its_path():
    with pytest.raises(ConfigError, match="must be >= 1") as err:
        from_mapping(BuildConfig, {"raw_dir": "raw", "shards": {"max_samples": 0}}, "config")
    assert err.value.field == "config.shards.max_samples"
    with pytest.raises(PixmoError, match="unknown keys"):
        from_mapping(BuildConfig, {"raw_dir": "raw", "engine": "beam"}, "config")
