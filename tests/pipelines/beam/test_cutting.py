"""Shards in the Beam graph (``pipelines.beam.cutting``): ``Cut`` over spilled samples and
``Plan`` per key range cut the same shards as ``ShardPlan`` over every sample, and none spans
two key ranges."""

from __future__ import annotations

import json

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to

from pipelines.beam import cutting, shuffle
from pixmo import build
from pixmo.build import BuildConfig
from pixmo.dataset.cutting import ShardPlan, partition_of
from pixmo.dataset.writer import ShardConfig

# 40 keys as hex digests: 10 in each quarter of the key space, so 4 key ranges of 10
KEYS = [f"{(r << 30) | (j << 24):08x}" + "ab" * 28 for r in range(4) for j in range(10)]


def _spilled(tmp_path, keys: list[str]) -> list[tuple[str, str]]:
    spill = shuffle.Spill(str(tmp_path), shuffle.ordered)
    spill.start_bundle()
    for key in keys:
        sample = build.PlannedSample(key=key, json=json.dumps({"key": key}).encode(),
                                     extension="png", size=1024)
        spill.process((key, sample.pack()))
    return [w.value for w in spill.finish_bundle()]


def _cut(spills, max_samples: int, start: int, parts: int) -> list[tuple[int, list[str]]]:
    cut = cutting.Cut(BuildConfig(raw_dir="unused", shards=ShardConfig(max_samples=max_samples)),
                      start=start)
    return [(index, [build.PlannedSample.unpack(p).key for p in packed])
            for index, packed in cut.process(spills, parts)]


def test_cut_streams_spilled_samples_into_shards_in_key_order(tmp_path):
    """``Cut`` reads samples spilled in key order and yields one shard at a time,
    numbered from ``start``, each at most ``max_samples`` long."""
    spills = _spilled(tmp_path, ["e5", "a1", "c3", "b2", "d4"])
    assert _cut(spills, 2, 3, parts=1) == [(3, ["a1", "b2"]), (4, ["c3", "d4"]), (5, ["e5"])]


def test_cut_ends_a_shard_where_a_key_range_ends(tmp_path):
    """With 4 key ranges a shard also ends at each range's end: the shards
    ``ShardPlan`` assigns every sample at once with the same ranges."""
    shards = _cut(_spilled(tmp_path, KEYS), 4, 2, parts=4)
    assert [len({partition_of(k, 4) for k in keys}) for _, keys in shards] == [1] * len(shards)
    assert [len(keys) for _, keys in shards] == [4, 4, 2] * 4
    plan = ShardPlan.assign([(k, 1024) for k in KEYS], ShardConfig(max_samples=4), 2, parts=4)
    assert [keys[0] for _, keys in shards] == list(plan.first_keys)
    assert [i for i, _ in shards] == list(range(2, 2 + plan.shards))


def test_plan_joins_each_key_range_planned_alone():
    """``Plan`` groups the sizes by key range, plans each apart and joins their
    first keys: the plan of every size at once; none for no samples."""
    cfg = BuildConfig(raw_dir="unused", shards=ShardConfig(max_samples=4))
    sizes = [(k, 1024 * (1 + i % 3)) for i, k in enumerate(KEYS)]
    expected = ShardPlan.assign(sizes, cfg.shards, 7, parts=4)
    with beam.Pipeline(options=PipelineOptions(["--runner=FnApiRunner"])) as p:
        parts = beam.pvalue.AsSingleton(p | "Parts" >> beam.Create([4]))
        plan = p | "Sizes" >> beam.Create(sizes) | cutting.Plan(cfg, 7, parts)
        assert_that(plan, equal_to([expected]))
        empty = p | "None" >> beam.Create([]) | "PlanNone" >> cutting.Plan(cfg, 7, parts)
        assert_that(empty, equal_to([]), label="NoPlan")
    assert expected.shards == 12 and expected.start == 7
