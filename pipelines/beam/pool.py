"""The heavy stages of a build, runnable on a pool of local processes.

Beam's local runner runs a stage on one core, and its multi-processing mode
ships every element over gRPC to SDK workers that each import Beam (seconds
of start-up per worker, measured in BENCHMARKS.md). Instead a DoFn can hand
batches of its work to ``StagePool``: worker processes forked from a clean
server that has imported ``pixmo.build.stages`` and nothing of Beam, results back
in submission order. With one process the same functions run inline.

The functions here are what a pool worker runs: plain stages from
``pixmo.build.stages`` plus the seconds each took, measured where the work happens.
"""

from __future__ import annotations

import multiprocessing
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from pixmo.build import stages as build
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


def write_shard(index: int, samples: Iterable[build.Packed], out_dir: str,
                cfg: build.BuildConfig, old: ShardStats | None) -> tuple[ShardStats, float]:
    """``build.write_or_keep`` on packed samples, and the seconds it took."""
    start = time.perf_counter()
    written = build.write_or_keep(index, map(build.PlannedSample.unpack, samples), out_dir,
                                  cfg, old)
    return written, time.perf_counter() - start


def _context() -> multiprocessing.context.BaseContext:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["pixmo.build.stages", "pipelines.beam.pool"])
    return context


def start_server() -> None:
    """Start the fork server now, so its imports overlap the caller's set-up."""
    _context()
    from multiprocessing import forkserver

    forkserver.ensure_running()


_executors: dict[int, ProcessPoolExecutor] = {}


class StagePool:
    """Runs ``fn(batch)`` on ``processes`` worker processes, at most two
    batches per process in flight, and gives results back in order. The
    stages of a build share one set of workers (``shutdown`` ends them), so
    two pooled stages start and hold ``processes`` workers, not twice that."""

    def __init__(self, processes: int) -> None:
        self.processes = processes
        if processes not in _executors:
            _executors[processes] = ProcessPoolExecutor(processes, mp_context=_context())
        self._executor = _executors[processes]
        self._pending: deque[Future[Any]] = deque()

    def submit(self, fn: Callable[..., Any], *args: Any) -> Iterator[Any]:
        """Queue one batch; yields the results of earlier batches that are ready."""
        self._pending.append(self._executor.submit(fn, *args))
        while self._pending and (self._pending[0].done()
                                 or len(self._pending) > 2 * self.processes):
            yield self._pending.popleft().result()

    def drain(self) -> Iterator[Any]:
        """Every result still outstanding, in order."""
        while self._pending:
            yield self._pending.popleft().result()

    def close(self) -> None:
        """Drop this stage's batches that have not started."""
        while self._pending:
            self._pending.popleft().cancel()


def shutdown() -> None:
    """End the worker processes the build's stages shared."""
    while _executors:
        _executors.popitem()[1].shutdown(cancel_futures=True)
