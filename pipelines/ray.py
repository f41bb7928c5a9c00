"""The build as a Ray Data graph: wiring of the stages in ``pixmo.build.stages``.

Starts Ray locally unless ``address`` names a cluster (``ray://…`` or
``auto``). Transcription runs in an actor pool, one loaded Whisper model per
actor, with ``workers`` actors and ``gpus_per_worker`` GPUs each; the pool
never reserves the CPUs the other stages' tasks need (``actor_resources``), and
a setting the cluster cannot run is refused before the build starts (Ray Data
shows its own progress bars; stage times are the driver's wall clock, since Ray
runs the stages between two materialisations as one pipeline). Rows carry the
stage objects in one column, so the stages stay plain functions; rejects ride
along untouched (grouped under an empty key) and are collected at the end.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import ray

from pixmo import build
from pixmo.errors import ConfigError
from pixmo.images import LoadedImage
from pixmo.rejects import Reject

OBJ = "obj"
KEY = "key"
Batch = dict[str, np.ndarray]


def _batch(objs: Iterable[Any], key: Callable[[Any], str] | None = None) -> Batch:
    objs = list(objs)
    column = np.empty(len(objs), dtype=object)
    column[:] = objs
    out = {OBJ: column}
    if key is not None:
        out[KEY] = np.array([key(o) for o in objs], dtype=object)
    return out


def _read(batch: Batch, raw_dir: str) -> Batch:
    out = []
    for name in batch[OBJ]:
        for item in build.read_raw(raw_dir, name):
            out.append(item if isinstance(item, Reject) else build.check_record(item))
    return _batch(out, lambda o: "" if isinstance(o, Reject) else o.image)


def _source(obj: Any) -> str:
    return obj.source if isinstance(obj, Reject) else obj.record.source


def _resolve(batch: Batch, cfg: build.BuildConfig, out_dir: str) -> Batch:
    items = list(batch[OBJ])
    if batch[KEY][0] == "":
        return _batch(items)
    records = sorted(items, key=lambda k: (k.record.source, k.record.record))
    image, rejects = build.resolve_image(records[0].image, records, cfg, out_dir)
    rejected = {(r.source, r.record) for r in rejects}
    pairs = [] if image is None else [image] + [
        (image, k) for k in records if (k.record.source, k.record.record) not in rejected]
    return _batch([*rejects, *pairs])


class _Annotate:
    """An actor: loads the Whisper model once, then annotates batches. Rejects
    and images pass through; images meet their annotations in the join."""

    def __init__(self, cfg: build.BuildConfig) -> None:
        self.annotator = build.Annotator(cfg)

    def __call__(self, batch: Batch) -> Batch:
        out = [item if isinstance(item, (Reject, LoadedImage)) else self.annotator(item[1],
                                                                                   item[0])
               for item in batch[OBJ]]
        return _batch(out, _sha)


def _sha(obj: Any) -> str:
    if isinstance(obj, Reject):
        return ""
    return obj.sha256 if isinstance(obj, LoadedImage) else obj.image_sha256


def _join(batch: Batch, cfg: build.BuildConfig, previous: build.Previous) -> Batch:
    """Samples come out planned, each with the input files of its records and
    the reasons of its failures."""
    items = list(batch[OBJ])
    if batch[KEY][0] == "":
        return _batch(items)
    images = [o for o in items if isinstance(o, LoadedImage)]
    annotations = [o for o in items if not isinstance(o, LoadedImage)]
    out = build.join_sample(images, annotations, cfg, previous)
    if isinstance(out, list):
        return _batch(out)
    return _batch([(build.plan(out), [s["file"] for s in out.json["sources"]],
                    [f["reason"] for f in out.json.get("failures", ())])])


def _summary(batch: Batch) -> Batch:
    """What the driver needs: rejects whole, samples as key, size, sources and
    failures."""
    return _batch([obj if isinstance(obj, Reject) else (obj[0].key, obj[0].size, *obj[1:])
                   for obj in batch[OBJ]])


def _write(batch: Batch, plan: build.ShardPlan, out_dir: str, cfg: build.BuildConfig,
           previous: build.Previous) -> Batch:
    samples = list(batch[OBJ])
    index = plan.shard_of(samples[0].key)
    return _batch([build.write_or_keep(index, samples, out_dir, cfg,
                                       previous.committed.get(index))])


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
    files = build.input_files(cfg.raw_dir)
    previous = build.prepare_output(out_dir, mode)
    parts = max(1, int(ray.available_resources().get("CPU", 1)))
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    records = ray.data.from_items([{OBJ: f} for f in files]).map_batches(
        _read, fn_args=(cfg.raw_dir,), batch_format="numpy").materialize()
    read = Counter()
    for row in records.select_columns([OBJ]).iter_rows():
        read[_source(row[OBJ])] += 1
    seconds["read"], start = time.perf_counter() - start, time.perf_counter()
    joined = (records.groupby(KEY, num_partitions=parts)
              .map_groups(lambda b: _resolve(b, cfg, out_dir), batch_format="numpy")
              .map_batches(_Annotate, fn_constructor_args=(cfg,), batch_size=8,
                           batch_format="numpy", concurrency=workers,
                           num_cpus=actor["num_cpus"], num_gpus=actor["num_gpus"] or None)
              .groupby(KEY, num_partitions=parts)
              .map_groups(lambda b: _join(b, cfg, previous), batch_format="numpy")
              .materialize())
    rejects, sizes, accepted, failures = [], [], Counter(), Counter()
    for row in joined.map_batches(_summary, batch_format="numpy").iter_rows():
        item = row[OBJ]
        if isinstance(item, Reject):
            rejects.append(item)
        else:
            key, size, files_of_sources, reasons = item
            sizes.append((key, size))
            accepted.update(files_of_sources)
            failures.update(reasons)
    seconds["image+annotate+join"], start = time.perf_counter() - start, time.perf_counter()
    plan = build.ShardPlan.assign(sizes, cfg.shards, previous.start_index)
    written = (joined.filter(lambda r: not isinstance(r[OBJ], Reject))
               .map(lambda r: {OBJ: r[OBJ][0], "shard": plan.shard_of(r[OBJ][0].key)})
               .groupby("shard", num_partitions=parts)
               .map_groups(lambda b: _write(b, plan, out_dir, cfg, previous),
                           batch_format="numpy")
               .take_all())
    seconds["write"] = time.perf_counter() - start
    build.finish(out_dir, cfg, "ray", [row[OBJ] for row in written], rejects, read, accepted,
                 failures, previous, stage_seconds=seconds)
