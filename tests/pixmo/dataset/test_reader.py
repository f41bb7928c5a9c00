"""Tests of pixmo.dataset.reader: committed shards, URLs and patterns, samples as bytes."""

from __future__ import annotations

import os
import pickle
import tarfile
from pathlib import Path

import pytest

from pixmo.dataset.format import ShardSample, json_bytes
from pixmo.dataset.reader import expand_braces, iter_samples, iter_shard, shard_urls
from pixmo.dataset.writer import ShardConfig, write_dataset, write_shard
from pixmo.errors import PixmoError
from tests.conftest import make_sample


def _write(out: Path, samples: list[ShardSample], **config) -> dict:
    return write_dataset(out, samples, name="test", config=ShardConfig(**config))


def test_our_reader_matches_written_samples(tmp_path, samples):
    _write(tmp_path, samples, max_samples=7)
    read = list(iter_samples(tmp_path))
    assert [(s.key, s.json, s.files) for s in read] == [(s.key, s.json, s.files)
                                                        for s in samples]


def test_reader_never_unpickles(tmp_path):
    class Boom:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    sample = make_sample(3)
    evil = ShardSample(sample.key, sample.json, {**sample.files, "pickle": pickle.dumps(Boom()),
                                                 "pth": pickle.dumps(Boom())})
    stats, _ = write_shard(tmp_path, 0, [evil])
    (read,) = list(iter_samples(tmp_path))
    assert read.files["pickle"] == evil.files["pickle"]  # handed back as bytes
    assert not (tmp_path / "pwned").exists()
    assert stats.samples == 1


def test_reader_accepts_fsspec_urls_and_brace_patterns(tmp_path, samples):
    import fsspec

    _write(tmp_path, samples, max_samples=10)
    memfs = fsspec.filesystem("memory")
    for tar in sorted((tmp_path / "shards").glob("*.tar")):
        memfs.pipe_file(f"/bucket/ds/shards/{tar.name}", tar.read_bytes())
        memfs.pipe_file(f"/bucket/ds/shards/{tar.stem}.json",
                        (tar.with_suffix(".json")).read_bytes())
    from_dir = [s.key for s in iter_samples("memory://bucket/ds")]
    pattern = "memory://bucket/ds/shards/pixmo-{000000..000002}.tar"
    assert len(expand_braces(pattern)) == 3
    from_pattern = [s.key for s in iter_samples(pattern)]
    from_file_urls = [s.key for s in iter_samples([f"file://{p}" for p in shard_urls(tmp_path)])]
    assert from_dir == from_pattern == from_file_urls == [s.key for s in samples]


def test_brace_expansion():
    assert expand_braces("a-{08..11}.tar") == ["a-08.tar", "a-09.tar", "a-10.tar", "a-11.tar"]
    assert expand_braces("{x,y}-{1..2}") == ["x-1", "x-2", "y-1", "y-2"]
    assert expand_braces("plain.tar") == ["plain.tar"]


def test_reader_reports_truncated_tar(tmp_path, samples):
    _write(tmp_path, samples[:5], max_samples=10)
    tar = tmp_path / "shards/pixmo-000000.tar"
    data = tar.read_bytes()
    tar.write_bytes(data[: 512 * 3 + 100])
    with pytest.raises(PixmoError, match="pixmo-000000.tar"):
        list(iter_shard(str(tar)))


def test_reader_refuses_non_adjacent_members(tmp_path):
    a, b = make_sample(1), make_sample(2)
    path = tmp_path / "odd.tar"
    with tarfile.open(path, "w") as tar:
        for key, ext, data in [(a.key, "json", json_bytes(a.json)), (b.key, "json",
                               json_bytes(b.json)), (a.key, "png", a.files["png"])]:
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size = len(data)
            import io

            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(PixmoError, match="not adjacent"):
        list(iter_shard(str(path)))
