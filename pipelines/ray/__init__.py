"""The build as a streaming Ray Data graph: wiring of the stages in ``pixmo.build.stages``.

Starts Ray locally unless ``address`` names a cluster (``ray://…`` or ``auto``).
The blocks and the functions Ray runs on them are in ``pipelines.ray.blocks``;
this module wires them. Input files are read in tasks -> records grouped by
image reference: each image is read, checked and annotated once (transcription
runs in a pool of ``workers`` actors, each with its loaded Whisper model and
``gpus_per_worker`` GPUs, fed batches of images) -> image parts grouped by a
range of content hashes: one planned sample per hash, kept in Ray's object
store. Then the count of samples gives the key ranges (``partitions``), each
range's shards are planned in a task from its samples' sizes, the plans join
here (a key per shard), and samples are grouped by shard and written.

What reaches the driver comes through ``collect``: counts per input file, per
reason and seconds per stage (summed by Ray), a plan per key range and stats per
shard; rejects are staged by the workers and merged by ``finish``. A grouping
is Ray's pull-based sort on the group column with fixed boundaries
(``_regroup``): one block per range of groups, whatever the number of blocks
coming in (``groupby().map_groups()`` makes as many as come in, here often one
task for everything), and tasks, not the aggregator actors a hash shuffle
starts for every grouping (three times slower on two cores, BENCHMARKS.md). The
pool never reserves the CPUs the other stages' tasks need
(``actor_resources``), and a setting the cluster cannot run is refused before
the build starts.
"""

from __future__ import annotations

import math
import pickle
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import ray

from pipelines.ray import blocks
from pipelines.ray.blocks import (
    ACCEPTED,
    BLOB,
    COUNT,
    FAILED,
    GROUP,
    KIND,
    NAME,
    READ,
    SAMPLES,
    SECONDS,
    STAGES,
)
from pixmo import build, remote
from pixmo.build.output import staged_rejects
from pixmo.dataset.cutting import partitions
from pixmo.errors import ConfigError

GROUP_BYTES = 32 << 20  # bytes of input per group of a grouping
SHUFFLE = ray.data.context.ShuffleStrategy.SORT_SHUFFLE_PULL_BASED


def actor_resources(workers: int, gpus_per_worker: float,
                    nodes: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """What each of ``workers`` transcription actors reserves on a cluster of ``nodes``
    (each node's resources), or a ``ConfigError`` naming the setting it cannot run.

    Every other stage runs as tasks of one CPU, so the pool together reserves at most
    the cluster's CPUs less one per node (then some node always has a CPU free for a
    task: were every node's free share below one, they would add up to less than the
    number of nodes), and each actor at most one CPU; on one CPU the actors reserve
    none. An actor is a process, so there are at most as many as CPUs. GPUs are whole
    units a fraction may share, so ``gpus_per_worker`` is below one or a whole number,
    and the actors must fit the nodes' GPUs, node by node."""
    cpus = sum(node.get("CPU", 0.0) for node in nodes)
    if workers < 1 or workers > cpus:
        raise ConfigError(f"must be between 1 and the Ray cluster's {cpus:g} CPUs (one "
                          f"transcription actor each), got {workers}", field="workers")
    if gpus_per_worker < 0 or (gpus_per_worker > 1 and not float(gpus_per_worker).is_integer()):
        raise ConfigError("must be a share of one GPU (0 to 1) or a whole number of GPUs, "
                          f"got {gpus_per_worker:g}", field="gpus_per_worker")
    if gpus_per_worker and not any(node.get("GPU") for node in nodes):
        raise ConfigError(f"is {gpus_per_worker:g} but the Ray cluster has no GPUs",
                          field="gpus_per_worker")
    if gpus_per_worker:
        fit = sum(math.floor(node.get("GPU", 0.0) / gpus_per_worker + 1e-9) for node in nodes)
        if fit < workers:
            gpus = "+".join(f"{node.get('GPU', 0.0):g}" for node in nodes)
            raise ConfigError(f"{gpus_per_worker:g} for each of {workers} workers does not fit "
                              f"the Ray cluster's GPUs ({gpus} on {len(nodes)} node(s)): "
                              f"{fit} fit", field="gpus_per_worker")
    spare = cpus - sum(1 for node in nodes if node.get("CPU", 0.0) >= 1)
    return {"num_cpus": math.floor(max(0.0, min(1.0, spare / workers)) * 1e4) / 1e4,
            "num_gpus": gpus_per_worker}


def _alive_nodes() -> list[dict[str, float]]:
    return [node["Resources"] for node in ray.nodes() if node.get("Alive")]


def collect(dataset: ray.data.Dataset) -> list[dict[str, Any]]:
    """The one way results reach the driver: rows per input file, per reason, per
    stage, per key range and per shard, never per sample or per reject."""
    return dataset.take_all()


def _regroup(dataset: ray.data.Dataset, count: int, blocks_: int | None = None,
             first: int = 0) -> ray.data.Dataset:
    """Rows regrouped into ``blocks_`` (default ``count``) blocks, each holding whole
    groups of the ``count`` from ``first`` (book rows with the first): Ray's sort with
    fixed boundaries, whose every range is one block."""
    blocks_ = blocks_ or count
    bounds = [first + -(-i * count // blocks_) for i in range(1, blocks_)]
    return dataset.sort(GROUP, boundaries=bounds) if bounds else dataset.repartition(1)


def _samples(cfg: build.BuildConfig, out_dir: str, files: Sequence[str],
             previous: build.Previous, groups: int, workers: int,
             actor: Mapping[str, float]) -> ray.data.Dataset:
    """Planned samples (a row per range of content hashes) and the book rows of
    every stage, kept in Ray's object store."""
    records = (ray.data.from_items([{"file": f} for f in files], override_num_blocks=len(files))
               .map_batches(blocks.read_files, batch_size=1, batch_format="pyarrow",
                            fn_kwargs={"raw_dir": cfg.raw_dir, "out_dir": out_dir,
                                       "groups": groups}))
    parts = _regroup(records, groups).map_batches(
        blocks.images, batch_size=None, batch_format="pyarrow",
        fn_kwargs={"cfg": cfg, "out_dir": out_dir, "groups": groups,
                   "inline": not cfg.transcribe})
    if cfg.transcribe:
        parts = parts.map_batches(
            blocks.Transcribe,
            fn_constructor_kwargs={"cfg": cfg, "out_dir": out_dir, "groups": groups},
            batch_size=1, batch_format="pyarrow", concurrency=workers,
            num_cpus=actor["num_cpus"], num_gpus=actor["num_gpus"] or None)
    llm = cfg.captions.llm if cfg.captions.method == "llm" else None
    if llm is not None and llm.local:  # a local caption model: loaded once per actor
        joined = _regroup(parts, groups).map_batches(
            blocks.Join, fn_constructor_kwargs={"cfg": cfg, "previous": previous,
                                                "out_dir": out_dir},
            batch_size=None, batch_format="pyarrow", concurrency=workers, num_cpus=0,
            num_gpus=actor["num_gpus"] or None)
    else:
        joined = _regroup(parts, groups).map_batches(
            blocks.join, batch_size=None, batch_format="pyarrow",
            fn_kwargs={"cfg": cfg, "previous": previous, "out_dir": out_dir})
    return joined.materialize()


def _totals(samples: ray.data.Dataset) -> defaultdict[str, Counter[str]]:
    """The book rows summed per kind and name (by Ray, not here)."""
    books = (samples.map_batches(blocks.books, batch_format="pyarrow")
             .groupby([KIND, NAME]).sum(COUNT))
    totals: defaultdict[str, Counter[str]] = defaultdict(Counter)
    for row in collect(books):
        totals[row[KIND]][row[NAME]] += row[f"sum({COUNT})"]
    return totals


def _shard_plan(samples: ray.data.Dataset, count: int, cfg: build.BuildConfig, start: int,
                groups: int) -> build.ShardPlan:
    """Each key range planned in a task from its sizes; the plans joined here."""
    if not count:
        return build.ShardPlan(first_keys=(), start=start)
    parts = partitions(count, cfg.shards.partition_samples)
    sizes = samples.map_batches(blocks.by_partition, batch_format="pyarrow",
                                fn_kwargs={"parts": parts})
    plans = _regroup(sizes, parts, min(parts, groups)).map_batches(
        blocks.plan_range, batch_size=None, batch_format="pyarrow", fn_kwargs={"cfg": cfg})
    return build.ShardPlan.join([(row[GROUP], tuple(pickle.loads(row[BLOB])))
                                 for row in collect(plans)], start)


def _written(samples: ray.data.Dataset, plan: build.ShardPlan, cfg: build.BuildConfig,
             out_dir: str, previous: build.Previous, groups: int) -> list[dict[str, Any]]:
    """Samples grouped by shard and written (or kept): a row per shard."""
    if not plan.shards:
        return []
    by_shard = samples.map_batches(blocks.by_shard, batch_format="pyarrow",
                                   fn_kwargs={"plan": plan})
    return collect(_regroup(by_shard, plan.shards, min(plan.shards, groups), plan.start)
                   .map_batches(blocks.write, batch_size=None, batch_format="pyarrow",
                                fn_kwargs={"cfg": cfg, "out_dir": out_dir,
                                           "committed": previous.committed}))


def run(cfg: build.BuildConfig, out_dir: str, *, address: str | None = None,
        num_cpus: int | None = None, workers: int = 1, gpus_per_worker: float = 0,
        mode: str = "resume") -> None:
    """Build ``out_dir`` from ``cfg.raw_dir`` with Ray Data, ``workers`` transcription
    actors with ``gpus_per_worker`` GPUs each (refused before anything is written where
    the cluster cannot run them)."""
    if not ray.is_initialized():
        if address is None:  # a Ray of this machine's CPUs: refused before Ray starts
            actor_resources(workers, 0, [{"CPU": num_cpus or ray._private.utils.get_num_cpus()}])
        ray.init(address=address, num_cpus=num_cpus, include_dashboard=False,
                 log_to_driver=False)
    actor = actor_resources(workers, gpus_per_worker, _alive_nodes())
    context = ray.data.DataContext.get_current()
    strategy, context.shuffle_strategy = context.shuffle_strategy, SHUFFLE
    try:
        _build(cfg, out_dir, workers, actor, mode)
    finally:
        context.shuffle_strategy = strategy


def _build(cfg: build.BuildConfig, out_dir: str, workers: int, actor: Mapping[str, float],
           mode: str) -> None:
    """The graph, in groups of about ``GROUP_BYTES`` of input each (at least two per
    CPU), then ``finish`` on the counts Ray summed and the shards' stats."""
    files = build.input_files(cfg.raw_dir)
    previous = build.prepare_output(out_dir, mode, cfg)
    raw = remote.Folder(cfg.raw_dir)
    groups = max(2 * int(ray.cluster_resources().get("CPU", 1)),
                 -(-sum(raw.size(f) for f in files) // GROUP_BYTES))
    samples = _samples(cfg, out_dir, files, previous, groups, workers, actor)
    totals = _totals(samples)
    plan = _shard_plan(samples, int(totals[SAMPLES][""]), cfg, previous.start_index, groups)
    written = _written(samples, plan, cfg, out_dir, previous, groups)
    seconds = {stage: totals[SECONDS][stage] for stage in STAGES[:2]}
    seconds["write"] = sum(row[COUNT] for row in written)
    counts = {kind: Counter({k: int(v) for k, v in totals[kind].items()})
              for kind in (READ, ACCEPTED, FAILED)}
    build.finish(out_dir, cfg, "ray", [pickle.loads(row[BLOB]) for row in written],
                 staged_rejects(out_dir), counts[READ], counts[ACCEPTED], counts[FAILED],
                 previous, stage_seconds=seconds, in_order=True)
