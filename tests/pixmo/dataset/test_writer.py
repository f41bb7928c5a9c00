"""Tests of pixmo.dataset.writer: byte-identical tars that any WebDataset reader reads,
cut by count and bytes, committed whole or not at all."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import pytest

from pixmo.dataset.format import ShardSample
from pixmo.dataset.reader import committed_shards, iter_samples, shard_urls
from pixmo.dataset.tables import read_manifest
from pixmo.dataset.writer import ShardConfig, TarShard, write_dataset
from pixmo.errors import PixmoError
from tests.conftest import make_sample
from tests.paths import REPO


def _write(out: Path, samples: list[ShardSample], **config) -> dict:
    return write_dataset(out, samples, name="test", config=ShardConfig(**config))


def test_roundtrip_through_plain_webdataset(tmp_path, samples):
    import webdataset as wds

    _write(tmp_path, samples, max_samples=10)
    urls = shard_urls(tmp_path)
    assert [Path(u).name for u in urls] == ["pixmo-000000.tar", "pixmo-000001.tar",
                                           "pixmo-000002.tar"]
    read = list(wds.WebDataset(urls, shardshuffle=False))
    assert len(read) == len(samples)
    for got, want in zip(read, samples, strict=True):
        assert got["__key__"] == want.key
        assert got["png"] == want.files["png"]  # original bytes, not re-encoded
        assert json.loads(got["json"]) == want.json
        assert set(got) == {"__key__", "__url__", "__local_path__", "png", "json"}


def test_tar_lists_members(tmp_path, samples):
    _write(tmp_path, samples[:3], max_samples=10)
    listing = subprocess.run(["tar", "-tf", str(tmp_path / "shards/pixmo-000000.tar")],
                             capture_output=True, text=True, check=True).stdout.split()
    assert listing == [f"{s.key}.{ext}" for s in samples[:3] for ext in ("json", "png")]


def test_ray_reads_shards(tmp_path, samples, ray_session):
    import ray

    _write(tmp_path, samples, max_samples=10)
    rows = ray.data.read_webdataset(shard_urls(tmp_path), decoder=None).take_all()
    by_key = {row["__key__"]: row for row in rows}
    assert sorted(by_key) == sorted(s.key for s in samples)
    for sample in samples:
        row = by_key[sample.key]
        assert row["png"] == sample.files["png"]
        assert json.loads(row["json"]) == sample.json


def test_same_samples_give_byte_identical_tars(tmp_path, samples, monkeypatch):
    _write(tmp_path / "a", samples, max_samples=10)
    later = time.time() + 86_400.5  # a different wall clock must not change the bytes
    monkeypatch.setattr(time, "time", lambda: later)
    monkeypatch.setattr(time, "time_ns", lambda: int(later * 1e9))
    _write(tmp_path / "b", samples, max_samples=10)
    monkeypatch.undo()
    a = sorted((tmp_path / "a/shards").glob("*.tar"))
    b = sorted((tmp_path / "b/shards").glob("*.tar"))
    assert len(a) == 3
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    for path in a:  # and no clock at all: not the time of writing, nor a file's mtime
        with tarfile.open(path) as tar:
            assert {(m.mtime, m.pax_headers.get("mtime")) for m in tar} == {(0, None)}
    stats_a = [s.sha256 for s in committed_shards(tmp_path / "a")]
    assert stats_a == [hashlib.sha256(p.read_bytes()).hexdigest() for p in a]


def test_rollover_by_count_and_bytes(tmp_path):
    padded = [ShardSample(s.key, s.json, {**s.files, "txt": b"x" * 3000})
              for s in (make_sample(i) for i in range(12))]
    max_bytes = 16 * 1024
    _write(tmp_path, padded, max_samples=5, max_bytes=max_bytes)
    stats = committed_shards(tmp_path)
    assert sum(s.samples for s in stats) == 12
    assert [s.index for s in stats] == list(range(len(stats)))
    # each sample is ~5.5 KiB in the tar, so the byte target (not the count) cuts at 2
    assert [s.samples for s in stats] == [2] * 6
    record = 10240  # tar streams end with two zero blocks padded to a 10 KiB record
    for s in stats:
        assert s.bytes <= -(-(max_bytes + 1024) // record) * record
    _write(tmp_path / "count", padded, max_samples=5, max_bytes=1 << 30)
    assert [s.samples for s in committed_shards(tmp_path / "count")] == [5, 5, 2]


def test_schema_is_checked_on_write(tmp_path):
    sample = make_sample(1)
    broken = ShardSample(sample.key, {**sample.json, "captions": [{"text": ""}]}, sample.files)
    with pytest.raises(PixmoError, match=r"captions\[0\]"):
        _write(tmp_path, [broken])


def test_empty_input_leaves_no_tar(tmp_path):
    description = _write(tmp_path, [])
    assert description["counts"]["samples"] == 0
    assert list(tmp_path.glob("shards/*")) == []  # no tar, no marker, no partial file
    assert read_manifest(tmp_path / "manifest.parquet") == []


def test_marker_counts_point_methods_and_failures(tmp_path):
    """What ``pixmo inspect`` reports without opening the tar."""
    counting = make_sample(1)
    counting.json["points"] = [{**p, "collection_method": "counting"}
                               for p in counting.json["points"]]
    counting.json["failures"] = [{"stage": "caption", "reason": "caption_failed",
                                  "detail": "HTTP 503", "session_ids": ["s-1"]}]
    shard = TarShard(tmp_path / "shards", 0)
    for sample in (make_sample(0), counting, make_sample(2)):
        shard.add(sample)
    stats = shard.commit()
    assert stats.point_methods == {"counting": 1, "pointing": 2}
    assert stats.failures == {"caption_failed": 1}
    assert committed_shards(tmp_path) == [stats]


def test_tar_shard_abort_leaves_nothing(tmp_path):
    shard = TarShard(tmp_path / "shards", 4)
    shard.add(make_sample(0))
    shard.abort()
    assert list((tmp_path / "shards").iterdir()) == []


KILL_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path[:0] = [{repo!r}]
    from pixmo.dataset.writer import ShardConfig, ShardWriter
    from tests.conftest import make_sample
    with ShardWriter(sys.argv[1], ShardConfig(max_samples=5)) as writer:
        for i in range(1000):
            writer.write(make_sample(i))
            if i >= 7:
                print("in-shard", flush=True)
                sys.stdin.readline()  # held here: the test kills this process
    """
)


def test_writer_killed_mid_shard_leaves_no_tar(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(KILL_SCRIPT.format(repo=str(REPO)))
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "out")],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "in-shard"
        shards = tmp_path / "out/shards"
        # shard 0 is committed, shard 1 holds three samples and is in progress
        assert (shards / "pixmo-000000.json").is_file()
        assert len(list(shards.glob("*.partial"))) == 1
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert sorted(p.name for p in shards.glob("*.tar")) == ["pixmo-000000.tar"]
    assert [s.shard for s in committed_shards(tmp_path / "out")] == ["pixmo-000000.tar"]
    assert [s.key for s in iter_samples(tmp_path / "out")] == [make_sample(i).key
                                                               for i in range(5)]
