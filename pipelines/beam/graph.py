"""The build as an Apache Beam graph: wiring of the stages in ``pixmo.build.stages``.

Runs locally on FnApiRunner (DirectRunner would first try to download the
Prism binary); with ``workers`` > 1 the image, annotation and shard-writing
stages run on that many local processes (``pipelines.beam.pool``). Any other Beam
option passes through: FnApiRunner's own ``--direct_running_mode=multi_processing``,
or ``--runner DataflowRunner --project …`` and ``--runner FlinkRunner
--flink_master …`` to run the same graph on a cluster (there ``workers`` stays
1: each core already runs its own Beam worker; ``pipelines.beam.staging`` hands
the workers the toolkit's wheel).

Three groupings, each as lean as the data allows: records by image
reference (an image is read once however many records name it), image parts
by content hash (two names for the same bytes make one sample), and planned
samples by shard. What crosses them carries no pixels: an image part is the
image's description and its annotations, a planned sample its encoded JSON.
On this machine they go through files (``pipelines.beam.shuffle``), so memory does
not grow with the input; the samples then reach their shards in key order,
cut into shards as they stream past. On a cluster they are Beam's own
GroupByKey, and shards come from a plan made per key range, never from every
sample's size in one place (``pipelines.beam.cutting``).

Rejects go to run files in the output's staging folder, one per bundle
(``stage_rejects``), which ``finish`` merges in input order. What else
``finish`` needs (per-file read and accepted counts, failures by reason,
seconds per stage, written shards) every stage sends to one "books" output as
(kind, item) pairs, added up as they meet (``_Books``): what reaches
``finish``, the one gathering in one place, is a total per file, reason and
stage and a stats record per shard, on any runner.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.transforms.window import GlobalWindows

from pipelines.beam import cutting, pool, progress, shuffle, staging
from pixmo import build
from pixmo.build.output import stage_rejects, staged_rejects
from pixmo.errors import PixmoError
from pixmo.rejects import Reject

BOOKS, SIZES = "books", "sizes"  # side outputs: to finish, to the shard plan
READ, ACCEPTED, FAILED, WRITTEN, SECONDS = "read", "accepted", "failed", "written", "seconds"
RUN_REJECTS = 10_000  # a bundle with more rejects stages them in runs of this many
JOIN_BATCH = 32  # content hashes joined (and captioned) together, at least
STAGES = (("read", "records"), ("image", "images"), ("annotate", "records"),
          ("join", "samples"), ("write", "shards"))


def _book(kind: str, item: Any) -> beam.pvalue.TaggedOutput:
    return beam.pvalue.TaggedOutput(BOOKS, (kind, item))


class _Stage(beam.DoFn):
    """Base of the build's DoFns: adds up the seconds each stage spends in a
    bundle and books them once, at the bundle's end, when it also stages the
    bundle's rejects as a run file of ``out_dir`` (several, past ``RUN_REJECTS``)."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def start_bundle(self) -> None:
        self.seconds: Counter[str] = Counter()
        self.rejects: list[Reject] = []

    def timed(self, stage: str, seconds: float, done: int = 1) -> None:
        self.seconds[stage] += seconds
        progress.advance(stage, done)

    def reject(self, rejects: Iterable[Reject]) -> None:
        self.rejects.extend(rejects)
        if len(self.rejects) >= RUN_REJECTS:
            self._stage_rejects()

    def _stage_rejects(self) -> None:
        stage_rejects(self.out_dir, self.rejects)
        self.rejects = []

    def finish_bundle(self) -> Iterator[Any]:
        self._stage_rejects()
        yield from _windowed(_book(SECONDS, item) for item in self.seconds.items())


def _windowed(outputs: Iterable[Any]) -> Iterator[Any]:
    """Outputs of ``finish_bundle``, which must name their window."""
    for out in outputs:
        if isinstance(out, beam.pvalue.TaggedOutput):
            yield beam.pvalue.TaggedOutput(out.tag, GlobalWindows.windowed_value(out.value))
        else:
            yield GlobalWindows.windowed_value(out)


class _Read(_Stage):
    """Records of one raw file, schema-checked, keyed by the image they name."""

    def __init__(self, raw_dir: str, out_dir: str) -> None:
        super().__init__(out_dir)
        self.raw_dir = raw_dir

    def process(self, name: str) -> Iterator[Any]:
        start, n = time.perf_counter(), 0
        for item in build.read_raw(self.raw_dir, name):
            n += 1
            out = item if isinstance(item, Reject) else build.check_record(item)
            if isinstance(out, Reject):
                self.reject([out])
            else:
                yield out.image, out.pack()
        self.timed("read", time.perf_counter() - start, n)
        yield _book(READ, (name, n))


class _Pooled(_Stage):
    """A stage whose work runs through ``pool.Batches``: on the build's worker
    processes, or inline, one element at a time, when ``processes`` is 1."""

    batch_size = 1

    def __init__(self, out_dir: str, processes: int) -> None:
        super().__init__(out_dir)
        self.processes = processes

    def start_bundle(self) -> None:
        super().start_bundle()
        self.batches = pool.Batches(self.work(), self.processes, self.batch_size)

    def teardown(self) -> None:  # a failed bundle: drop its batches not yet started
        batches = getattr(self, "batches", None)
        if batches is not None:
            batches.close()

    def work(self) -> Callable[[list[Any]], list[Any]]:
        """The picklable function of a batch of prepared elements."""
        raise NotImplementedError

    def prepare(self, element: Any) -> Any:
        """One element as ``work`` takes it."""
        raise NotImplementedError

    def emit(self, result: Any) -> Iterator[Any]:
        """Outputs of one element's result."""
        raise NotImplementedError

    def process(self, element: Any) -> Iterator[Any]:
        for result in self.batches.add(self.prepare(element)):
            yield from self.emit(result)

    def finish_bundle(self) -> Iterator[Any]:
        yield from _windowed(out for result in self.batches.flush()
                             for out in self.emit(result))
        yield from super().finish_bundle()


class _Image(_Pooled):
    """Loads the image one reference names, once, then annotates every record
    naming it. The Whisper model is loaded once per process: in ``setup``, or
    by each pool worker."""

    batch_size = 32

    def __init__(self, cfg: build.BuildConfig, out_dir: str, processes: int) -> None:
        super().__init__(out_dir, processes)
        self.cfg = cfg

    def setup(self) -> None:
        self.annotator = build.Annotator(self.cfg) if self.processes == 1 else None

    def work(self) -> Callable[[list[Any]], list[pool.ImageResult]]:
        return partial(pool.image_batch, cfg=self.cfg, out_dir=self.out_dir,
                       annotator=self.annotator)

    def prepare(self, element: tuple[str, Iterable[build.Packed]]) -> Any:
        ref, records = element
        return ref, list(records)

    def emit(self, result: pool.ImageResult) -> Iterator[Any]:
        self.timed("image", result.image_seconds)
        if result.part is not None:
            self.timed("annotate", result.annotate_seconds, result.annotated)
            yield result.sha256, result.part
        self.reject(result.rejects)


class _Join(_Stage):
    """One sample per content hash, planned for its shard; counts the records
    it accepts per input file, and its samples' failures by reason, once per
    bundle. Hashes are joined in batches of ``JOIN_BATCH`` so their captions are
    written together (``captions.concurrency`` requests at once, or a local model's
    batches); the caption writer, with a local model loaded, is built once per
    worker in ``setup``."""

    def __init__(self, cfg: build.BuildConfig, out_dir: str, previous: build.Previous,
                 sizes: bool) -> None:
        super().__init__(out_dir)
        self.cfg, self.previous, self.sizes = cfg, previous, sizes

    def setup(self) -> None:
        self.writer = build.caption_writer(self.cfg, self.out_dir)

    def start_bundle(self) -> None:
        super().start_bundle()
        self.accepted: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self.pending: list[tuple[list[Any], list[Any]]] = []

    def process(self, element: tuple[str, Iterable[build.Packed]]) -> Iterator[Any]:
        parts = [build.ImagePart.unpack(p) for p in element[1]]
        self.pending.append(([p.image for p in parts],
                             [a for p in parts for a in p.annotations]))
        if len(self.pending) >= max(JOIN_BATCH, 2 * self.cfg.captions.concurrency):
            yield from self._join()

    def _join(self) -> Iterator[Any]:
        start, pending, self.pending = time.perf_counter(), self.pending, []
        outs = build.join_samples(pending, self.cfg, self.previous, self.writer)
        for out in outs:
            if isinstance(out, list):
                self.reject(out)
                continue
            self.accepted.update(s["file"] for s in out.json["sources"])
            self.failed.update(f["reason"] for f in out.json.get("failures", ()))
            planned = build.plan(out)
            if self.sizes:
                yield beam.pvalue.TaggedOutput(SIZES, (planned.key, planned.size))
            yield planned.key, planned.pack()
        self.timed("join", time.perf_counter() - start,
                   sum(not isinstance(out, list) for out in outs))

    def finish_bundle(self) -> Iterator[Any]:
        yield from _windowed(self._join())
        yield from super().finish_bundle()
        yield from _windowed(_book(ACCEPTED, item) for item in self.accepted.items())
        yield from _windowed(_book(FAILED, item) for item in self.failed.items())


class _Write(_Pooled):
    """Writes one shard (or keeps it, when committed and current)."""

    def __init__(self, cfg: build.BuildConfig, out_dir: str, previous: build.Previous,
                 processes: int) -> None:
        super().__init__(out_dir, processes)
        self.cfg, self.previous = cfg, previous

    def work(self) -> Callable[[list[Any]], list[tuple[Any, float]]]:
        return partial(pool.write_shards, out_dir=self.out_dir, cfg=self.cfg)

    def prepare(self, element: tuple[int, Iterable[build.Packed]]) -> Any:
        index, samples = element
        return index, list(samples), self.previous.committed.get(index)

    def emit(self, result: tuple[Any, float]) -> Iterator[Any]:
        written, seconds = result
        self.timed("write", seconds)
        yield _book(WRITTEN, written)


class _Books(beam.CombineFn):
    """The books added up wherever they meet: a total per kind and name (input
    file, reason, stage) and the stats of each written shard, so what reaches
    ``finish`` never grows with samples, rejects or bundles."""

    def create_accumulator(self) -> tuple[Counter[tuple[str, str]], dict[int, Any]]:
        return Counter(), {}

    def add_input(self, books: Any, book: tuple[str, Any]) -> Any:
        kind, item = book
        if kind == WRITTEN:
            books[1][item.index] = item
        else:
            books[0][kind, item[0]] += item[1]
        return books

    def merge_accumulators(self, accumulators: Iterable[Any]) -> Any:
        totals, written = self.create_accumulator()
        for more, shards in accumulators:
            totals.update(more)  # Counter.update adds
            written.update(shards)
        return totals, written

    def extract_output(self, books: Any) -> list[tuple[str, Any]]:
        totals, written = books
        return [*((kind, (name, n)) for (kind, name), n in sorted(totals.items())),
                *((WRITTEN, stats) for _, stats in sorted(written.items()))]


def _finish(books: list[tuple[str, Any]], out_dir: str, cfg: build.BuildConfig,
            previous: build.Previous) -> dict[str, Any]:
    """``build.finish`` on what the stages booked, added up (``_Books``), and
    the rejects they staged."""
    written = []
    totals: dict[str, Counter[str]] = {READ: Counter(), ACCEPTED: Counter(), FAILED: Counter(),
                                       SECONDS: Counter()}
    for kind, item in books:
        if kind == WRITTEN:
            written.append(item)
        else:
            totals[kind][item[0]] += item[1]
    return build.finish(out_dir, cfg, "beam", written, staged_rejects(out_dir), totals[READ],
                        totals[ACCEPTED], totals[FAILED], previous,
                        stage_seconds=dict(totals[SECONDS]), in_order=True)


def _runner_args(beam_args: Sequence[str]) -> list[str]:
    args = list(beam_args)
    if not any(a.startswith("--runner") for a in args):
        args += ["--runner=FnApiRunner"]
    return args


def runs_locally(beam_args: Sequence[str]) -> bool:
    """Whether every Beam worker runs on this machine (FnApiRunner, any mode),
    so the groupings can go through local files."""
    return str(PipelineOptions(_runner_args(beam_args)).get_all_options()["runner"]
               ).endswith("FnApiRunner")


def runs_in_process(beam_args: Sequence[str]) -> bool:
    """Whether the DoFns run in this process (FnApiRunner's in-memory mode,
    the default): where ``pipelines.beam.progress`` sees their counts, and where a
    stage pool is the only other work on the machine's cores."""
    options = PipelineOptions(_runner_args(beam_args)).get_all_options()
    return (str(options["runner"]).endswith("FnApiRunner")
            and options.get("direct_running_mode") in (None, "in_memory"))


def run(cfg: build.BuildConfig, out_dir: str, beam_args: Sequence[str] = (),
        workers: int = 1, mode: str = "resume", shuffle_dir: str | None = None) -> None:
    """Build ``out_dir`` (a path or fsspec URL) from ``cfg.raw_dir`` with Beam;
    ``workers`` processes load images and write shards. On the local runner
    the groupings spill to a temporary folder in ``shuffle_dir`` (default: the
    system's temporary folder), removed when the build ends."""
    if workers > 1 and not runs_in_process(beam_args):
        raise PixmoError("--workers is for the local in-memory runner; a cluster or "
                         "multi-processing runner already runs a Beam worker per core",
                         field="workers")
    options = staging.for_workers(_runner_args(beam_args))  # remote workers: the wheel
    with contextlib.ExitStack() as stack:
        if workers > 1:
            stack.enter_context(pool.shared_workers())
        files = build.input_files(cfg.raw_dir)
        previous = build.prepare_output(out_dir, mode, cfg)
        spills = (stack.enter_context(shuffle.SpillFolder(shuffle_dir))
                  if runs_locally(beam_args) else None)
        p = beam.Pipeline(options=PipelineOptions(options))
        _graph(p, cfg, out_dir, files, previous, workers, spills)
        p.run().wait_until_finish()


def _graph(p: beam.Pipeline, cfg: build.BuildConfig, out_dir: str, files: list[str],
           previous: build.Previous, workers: int, spills: shuffle.SpillFolder | None
           ) -> None:
    def group(name: str) -> beam.PTransform:
        return beam.GroupByKey() if spills is None else spills.group(name)

    read = (p | "Files" >> beam.Create(files)
            | "Read" >> beam.ParDo(_Read(cfg.raw_dir, out_dir)).with_outputs(
                BOOKS, main="records"))
    images = (read.records | "GroupByRef" >> group("by-ref")
              | "Image" >> beam.ParDo(_Image(cfg, out_dir, workers)).with_outputs(
                  BOOKS, main="parts"))
    joined = (images.parts | "GroupByHash" >> group("by-hash")
              | "Join" >> beam.ParDo(_Join(cfg, out_dir, previous, sizes=spills is None))
              .with_outputs(BOOKS, SIZES, main="samples"))
    shards = ({"samples": joined.samples, "sizes": joined[SIZES]}
              | "Shards" >> cutting.Shards(cfg, previous.start_index, spills))
    written = shards | "Write" >> beam.ParDo(_Write(cfg, out_dir, previous, workers)
                                             ).with_outputs(BOOKS)
    ((read[BOOKS], images[BOOKS], joined[BOOKS], written[BOOKS]) | "Books" >> beam.Flatten()
     # never empty (every input file books its count)
     | "AddBooks" >> beam.CombineGlobally(_Books()).without_defaults()
     | "Finish" >> beam.Map(_finish, out_dir, cfg, previous))
