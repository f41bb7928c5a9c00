"""Planned samples into shards, in the Beam graph: shards never span a key range.

The number of samples (a count) fixes how many key ranges the shards are cut
in (``pixmo.dataset.cutting.partitions``). On this machine the samples come
back from their spill files in key order and ``Cut`` ends a shard where a
range ends, as well as at the size limits, holding one shard at a time. On
a cluster ``Plan`` groups the (key, size) pairs by range, plans each range
alone from its own sizes (``ShardPlan.assign``), and gathers only their
first keys, a string per shard, into the plan every worker gets as a side
input: no worker ever holds a size per sample of the whole build. Both cut
the same shards (``ShardPlan.join`` is ``ShardCutter`` over every range).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import apache_beam as beam

from pipelines.beam import progress, shuffle
from pixmo import build
from pixmo.dataset.cutting import ShardCutter, partition_of, partitions


class Shards(beam.PTransform):
    """(shard index, packed samples) for each shard, from ``{"samples": (key,
    packed sample), "sizes": (key, size)}``: cut from spills in key order on this
    machine (``spills``), or by a plan of the key ranges on a cluster (``spills``
    None; ``sizes`` is read only there)."""

    def __init__(self, cfg: build.BuildConfig, start: int,
                 spills: shuffle.SpillFolder | None) -> None:
        super().__init__()
        self.cfg, self.start, self.spills = cfg, start, spills

    def expand(self, joined: dict[str, beam.PCollection]) -> beam.PCollection:
        samples = joined["samples"]
        parts = beam.pvalue.AsSingleton(
            samples | "Count" >> beam.combiners.Count.Globally()
            | "Partitions" >> beam.Map(partitions, self.cfg.shards.partition_samples))
        if self.spills is not None:
            return (samples
                    | "Spill" >> beam.ParDo(self.spills.spill_in_order("samples"))
                    | "AllSpills" >> beam.CombineGlobally(beam.combiners.ToListCombineFn())
                    .without_defaults()
                    | "Cut" >> beam.ParDo(Cut(self.cfg, self.start), parts))
        plan = joined["sizes"] | "Plan" >> Plan(self.cfg, self.start, parts)
        no_samples = build.ShardPlan(first_keys=(), start=self.start)
        return (samples
                | "ShardOf" >> beam.Map(_by_shard, beam.pvalue.AsSingleton(
                    plan, default_value=no_samples))
                | "GroupByShard" >> beam.GroupByKey())


class Cut(beam.DoFn):
    """Shards from samples spilled in key order: one shard in memory at a time;
    a shard also ends where one of the build's ``parts`` key ranges does."""

    def __init__(self, cfg: build.BuildConfig, start: int) -> None:
        self.cfg, self.start = cfg, start

    def process(self, spills: list[tuple[str, str]], parts: int
                ) -> Iterator[tuple[int, list[build.Packed]]]:
        shards = self.cfg.shards
        cutter = ShardCutter(shards.max_samples, shards.max_bytes, self.start, parts)
        shard: list[build.Packed] = []
        for key, packed in shuffle.in_order(spills):
            index = cutter.index
            if cutter.shard_of(build.PlannedSample.unpack(packed).size, key) != index and shard:
                yield index, shard
                shard = []
            shard.append(packed)
        if shard:
            progress.set_total("write", cutter.index - self.start + 1)
            yield cutter.index, shard


class Plan(beam.PTransform):
    """The shard plan from (key, size) pairs, one per sample, as one element
    (none for no samples): each of the ``parts`` key ranges planned alone, from
    its own sizes, and their first keys joined in range order."""

    def __init__(self, cfg: build.BuildConfig, start: int, parts: beam.pvalue.AsSingleton
                 ) -> None:
        super().__init__()
        self.cfg, self.start, self.parts = cfg, start, parts

    def expand(self, sizes: beam.PCollection) -> beam.PCollection:
        return (sizes
                | "ByPartition" >> beam.Map(_by_partition, self.parts)
                | "GroupByPartition" >> beam.GroupByKey()
                | "PlanPartition" >> beam.Map(_plan_partition, self.cfg)
                | "AllPlans" >> beam.CombineGlobally(beam.combiners.ToListCombineFn())
                .without_defaults()
                | "JoinPlans" >> beam.Map(_join_plans, self.start))


def _by_partition(sized: tuple[str, int], parts: int) -> tuple[int, tuple[str, int]]:
    return partition_of(sized[0], parts), sized


def _plan_partition(group: tuple[int, Iterable[tuple[str, int]]], cfg: build.BuildConfig
                    ) -> tuple[int, tuple[str, ...]]:
    part, sizes = group
    return part, build.ShardPlan.assign(sizes, cfg.shards, 0).first_keys


def _join_plans(plans: list[tuple[int, tuple[str, ...]]], start: int) -> build.ShardPlan:
    plan = build.ShardPlan.join(plans, start)
    progress.set_total("write", plan.shards)
    return plan


def _by_shard(keyed: tuple[str, build.Packed], plan: build.ShardPlan
              ) -> tuple[int, build.Packed]:
    return plan.shard_of(keyed[0]), keyed[1]
