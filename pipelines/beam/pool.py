"""The heavy stages of a build, runnable on a pool of local processes.

Beam's local runner runs a stage on one core, and its multi-processing mode
ships every element over gRPC to SDK workers that each import Beam (seconds
of start-up per worker, measured in BENCHMARKS.md). Instead a DoFn can hand
its elements to ``Batches``, which runs them in batches on worker processes
forked from a clean server that has imported ``pixmo.build.stages`` and
nothing of Beam, results back in submission order. The workers live for one
``shared_workers`` block, shared by every pooled stage of the build. With one
process the same functions run inline.

The batch functions here are what a pool worker runs: plain stages from
``pixmo.build.stages`` plus the seconds each took, measured where the work happens.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from pixmo import build
from pixmo.dataset.format import ShardStats
from pixmo.rejects import Reject


@dataclass
class ImageResult:
    """What the image stage made of one reference and the records naming it."""

    sha256: str | None  # None: the image was rejected
    part: build.Packed | None  # the image's part, packed for the shuffle by content hash
    rejects: list[Reject]
    annotated: int  # records that reached the annotator
    image_seconds: float
    annotate_seconds: float


@lru_cache(maxsize=1)
def _annotator(cfg: build.BuildConfig) -> build.Annotator:
    """One annotator (one loaded Whisper model) per worker process."""
    return build.Annotator(cfg)


def image_batch(groups: Sequence[tuple[str, Iterable[build.Packed]]], cfg: build.BuildConfig,
                out_dir: str, annotator: build.Annotator | None = None
                ) -> list[ImageResult]:
    """Load the image of each reference once, then annotate every record naming
    it; records come packed (``Keyed.pack``), grouped by reference."""
    annotator = annotator or _annotator(cfg)
    out = []
    for ref, packed in groups:
        records = sorted((build.Keyed.unpack(k) for k in packed),
                         key=lambda k: (k.record.source, k.record.record))
        start = time.perf_counter()
        image, rejects = build.resolve_image(ref, records, cfg, out_dir)
        loaded = time.perf_counter()
        if image is None:
            out.append(ImageResult(None, None, rejects, 0, loaded - start, 0.0))
            continue
        rejected = {(r.source, r.record) for r in rejects}
        named = [k for k in records if (k.record.source, k.record.record) not in rejected]
        part, more = annotator.part(image, named)
        out.append(ImageResult(image.sha256, part.pack(), rejects + more, len(named),
                               loaded - start, time.perf_counter() - loaded))
    return out


def write_shards(shards: Sequence[tuple[int, Iterable[build.Packed], ShardStats | None]],
                 out_dir: str, cfg: build.BuildConfig) -> list[tuple[ShardStats, float]]:
    """``build.write_or_keep`` on each (index, packed samples, committed stats or None),
    and the seconds each took."""
    out = []
    for index, samples, old in shards:
        start = time.perf_counter()
        written = build.write_or_keep(index, map(build.PlannedSample.unpack, samples),
                                      out_dir, cfg, old)
        out.append((written, time.perf_counter() - start))
    return out


_executors: dict[int, ProcessPoolExecutor] | None = None  # inside ``shared_workers`` only


def _context() -> multiprocessing.context.BaseContext:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["pixmo.build", "pipelines.beam.pool"])
    return context


@contextlib.contextmanager
def shared_workers() -> Iterator[None]:
    """The block in which ``Batches`` run on worker processes: one set of workers per
    process count, shared by every pooled stage, so two stages hold ``processes``
    workers, not twice that; all end with the block. The fork server starts now,
    so its imports overlap the caller's set-up."""
    global _executors
    if _executors is not None:
        raise RuntimeError("the build's worker processes are already shared")
    _context()
    from multiprocessing import forkserver

    forkserver.ensure_running()
    _executors = {}
    try:
        yield
    finally:
        executors, _executors = _executors, None
        for executor in executors.values():
            executor.shutdown(cancel_futures=True)


def _executor(processes: int) -> ProcessPoolExecutor:
    if _executors is None:
        raise RuntimeError("Batches on worker processes run inside shared_workers()")
    if processes not in _executors:
        _executors[processes] = ProcessPoolExecutor(processes, mp_context=_context())
    return _executors[processes]


class Batches:
    """Runs ``fn`` (a picklable function from a list of elements to a list of results)
    on the elements ``add``-ed, and gives back their results in order: inline, one
    element at a time, when ``processes`` is 1; otherwise ``batch_size`` elements a
    batch on the ``shared_workers``, at most two batches per process in flight."""

    def __init__(self, fn: Callable[[list[Any]], list[Any]], processes: int,
                 batch_size: int = 1) -> None:
        self.fn, self.processes, self.batch_size = fn, processes, batch_size
        self._executor = _executor(processes) if processes > 1 else None
        self._batch: list[Any] = []
        self._pending: deque[Future[list[Any]]] = deque()

    def add(self, element: Any) -> Iterator[Any]:
        """Take one element; yields the results that are ready."""
        self._batch.append(element)
        if self._executor is None:
            batch, self._batch = self._batch, []
            yield from self.fn(batch)
        elif len(self._batch) >= self.batch_size:
            yield from self._submit(self._executor)

    def _submit(self, executor: ProcessPoolExecutor) -> Iterator[Any]:
        batch, self._batch = self._batch, []
        self._pending.append(executor.submit(self.fn, batch))
        while self._pending and (self._pending[0].done()
                                 or len(self._pending) > 2 * self.processes):
            yield from self._pending.popleft().result()

    def flush(self) -> Iterator[Any]:
        """Every result still outstanding, in order."""
        if self._batch and self._executor is not None:
            yield from self._submit(self._executor)
        while self._pending:
            yield from self._pending.popleft().result()

    def close(self) -> None:
        """Drop the batches that have not started."""
        while self._pending:
            self._pending.popleft().cancel()
