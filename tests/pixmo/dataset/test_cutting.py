"""Cutting samples into shards: the size estimate against real tars, the cutter and the plan."""

from __future__ import annotations

import hashlib
import random

from pixmo.dataset.cutting import ShardCutter, ShardPlan, partition_of, partitions, tar_bytes
from pixmo.dataset.tables import read_manifest
from pixmo.dataset.writer import ShardConfig, tar_digest, write_dataset
from tests.conftest import make_sample


def test_tar_bytes_is_a_header_and_padded_data_per_member():
    assert tar_bytes([]) == 0
    assert tar_bytes([0]) == 512
    assert tar_bytes([1, 512]) == 2 * 512 + 512 + 512
    assert tar_bytes([513]) == 512 + 1024


def test_tar_bytes_is_what_a_written_tar_takes(samples):
    sizes = [tar_bytes(len(data) for _, data in s.members()) for s in samples]
    _, size = tar_digest(samples)
    record = 20 * 512  # tar pads the archive (with its two end blocks) to whole records
    assert size == -(-(sum(sizes) + 1024) // record) * record


def test_the_cutter_ends_a_shard_before_the_sample_that_would_pass_a_limit():
    by_count = ShardCutter(max_samples=2)
    assert [by_count.shard_of(10) for _ in range(5)] == [0, 0, 1, 1, 2]
    by_bytes = ShardCutter(max_samples=100, max_bytes=2500, start=4)
    assert [by_bytes.shard_of(size) for size in (1000, 1000, 1000, 3000, 10)] == [4, 4, 5, 6, 7]
    assert by_bytes.index == 7


def assign_shards(sizes: dict[str, int], max_samples: int, max_bytes: int | None = None,
                  start: int = 0) -> dict[str, int]:
    """Shard of every key under the plan engines hand their workers."""
    cfg = ShardConfig(max_samples=max_samples, **({} if max_bytes is None else
                                                  {"max_bytes": max_bytes}))
    plan = ShardPlan.assign(sizes.items(), cfg, start)
    return {key: plan.shard_of(key) for key in sizes}


def test_shard_assignment_depends_only_on_the_samples():
    sizes = {f"k{i:03d}": 1000 for i in range(25)}
    forward = assign_shards(sizes, 10)
    assert forward == assign_shards(dict(reversed(sizes.items())), 10)
    assert sorted(set(forward.values())) == [0, 1, 2]
    assert [k for k, s in forward.items() if s == 2] == sorted(sizes)[20:]
    by_bytes = assign_shards(sizes, 10, max_bytes=3500)
    assert [list(by_bytes.values()).count(i) for i in range(9)] == [3] * 8 + [1]
    assert min(assign_shards(sizes, 10, start=7).values()) == 7


def test_the_plan_cuts_where_the_cutter_cuts():
    samples = sorted((make_sample(i) for i in range(12)), key=lambda s: s.key)
    sizes = [(s.key, tar_bytes(len(d) for _, d in s.members())) for s in samples]
    cfg = ShardConfig(max_samples=5, max_bytes=3 * sizes[0][1])
    cutter = ShardCutter(cfg.max_samples, cfg.max_bytes, start=2)
    plan = ShardPlan.assign(sizes, cfg, start=2)
    assert [plan.shard_of(k) for k, _ in sizes] == [cutter.shard_of(n) for _, n in sizes]
    assert plan.shards == len(plan.first_keys) == cutter.index - 1


def test_the_writer_cuts_where_the_plan_cuts(tmp_path, samples):
    """``write_dataset`` (the import's writer) and an engine's plan give the same shards."""
    samples = sorted(samples, key=lambda s: s.key)
    sizes = [(s.key, tar_bytes(len(d) for _, d in s.members())) for s in samples]
    cfg = ShardConfig(max_samples=6, max_bytes=4 * max(n for _, n in sizes))
    write_dataset(tmp_path, samples, name="cut", config=cfg)
    rows = read_manifest(tmp_path / "manifest.parquet")
    plan = ShardPlan.assign(sizes, cfg, start=0)
    assert [r["shard"] for r in rows] == [f"pixmo-{plan.shard_of(r['key']):06d}.tar"
                                          for r in rows]
    assert plan.shards == 6  # 23 samples, four to a shard by bytes


def hex_sizes(n: int, seed: int = 0) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    return [(hashlib.sha256(str(i).encode()).hexdigest()[:24], rng.randrange(600, 5000))
            for i in range(n)]


def test_partitions_are_key_ranges_of_about_partition_samples():
    assert [partitions(n, 100) for n in (0, 1, 100, 101, 1000)] == [1, 1, 1, 2, 10]
    keys = sorted(k for k, _ in hex_sizes(2000))
    parts = [partition_of(k, 8) for k in keys]
    assert parts == sorted(parts) and set(parts) == set(range(8))  # ranges follow key order
    assert max(parts.count(p) for p in range(8)) < 2000 / 8 * 1.3  # uniform hashes
    assert partition_of("0" * 24, 8) == 0 and partition_of("f" * 24, 8) == 7
    assert {partition_of(k, 1) for k in keys} == {0}


def test_a_build_cut_in_partitions_is_the_join_of_each_partitions_plan():
    """Each partition planned alone, by anyone, then joined: the plan of the whole."""
    sizes = hex_sizes(3000)
    cfg = ShardConfig(max_samples=70, max_bytes=150_000, partition_samples=500)
    parts = partitions(len(sizes), cfg.partition_samples)
    whole = ShardPlan.assign(sizes, cfg, start=3, parts=parts)
    by_part: dict[int, list[tuple[str, int]]] = {}
    for key, size in reversed(sizes):
        by_part.setdefault(partition_of(key, parts), []).append((key, size))
    joined = ShardPlan.join([(p, ShardPlan.assign(s, cfg, 0).first_keys)
                             for p, s in random.Random(1).sample(sorted(by_part.items()),
                                                                   len(by_part))], start=3)
    assert joined == whole and parts == 6
    shard_part = {}
    for key, _ in sizes:  # no shard spans two partitions
        assert shard_part.setdefault(whole.shard_of(key), partition_of(key, parts)) == \
            partition_of(key, parts)
    cutter = ShardCutter(cfg.max_samples, cfg.max_bytes, start=3, parts=parts)
    assert [whole.shard_of(k) for k, _ in sorted(sizes)] == [cutter.shard_of(n, k)
                                                            for k, n in sorted(sizes)]


def test_one_partition_cuts_as_the_plain_cutter():
    sizes = hex_sizes(400)
    cfg = ShardConfig(max_samples=30, partition_samples=400)
    assert ShardPlan.assign(sizes, cfg, 0, partitions(400, 400)) == ShardPlan.assign(sizes, cfg, 0)
