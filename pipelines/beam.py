"""The build as an Apache Beam graph: wiring of the stages in ``pixmo.build``.

Runs locally on FnApiRunner (DirectRunner would first try to download the
Prism binary); ``--workers N`` uses its multi-processing mode. Any other Beam
option passes through, so ``--runner DataflowRunner --project …`` or
``--runner FlinkRunner --flink_master …`` run the same graph on a cluster.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import apache_beam as beam
from apache_beam.metrics.metric import Metrics, MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions

from pixmo import build
from pixmo.rejects import Reject
from pixmo.samples import assign_shards

REJECT = "reject"


STAGE_TIME = "pixmo-stage-us"  # Beam counter namespace: microseconds spent per stage


def _timer(stage: str) -> Any:
    return Metrics.counter(STAGE_TIME, stage)


class _Tag(beam.DoFn):
    """Runs a stage, sends its rejects to a tagged output and times it."""

    def __init__(self, stage: str, fn: Any) -> None:
        self.stage, self.fn = stage, fn

    def setup(self) -> None:
        self.timer = _timer(self.stage)

    def process(self, element: Any) -> Iterator[Any]:
        start = time.perf_counter()
        outs = list(self.fn(element))
        self.timer.inc(int((time.perf_counter() - start) * 1e6))
        for out in outs:
            yield beam.pvalue.TaggedOutput(REJECT, out) if isinstance(out, Reject) else out


class _Annotate(beam.DoFn):
    """Loads the Whisper model once per worker (``setup``), then annotates."""

    def __init__(self, cfg: build.BuildConfig) -> None:
        self.cfg = cfg
        self.annotator: build.Annotator | None = None

    def setup(self) -> None:
        self.annotator = build.Annotator(self.cfg)
        self.timer = _timer("annotate")

    def process(self, element: tuple[Any, build.Keyed]) -> Iterator[Any]:
        image, keyed = element
        start = time.perf_counter()
        out = self.annotator(keyed, image)
        self.timer.inc(int((time.perf_counter() - start) * 1e6))
        if isinstance(out, Reject):
            yield beam.pvalue.TaggedOutput(REJECT, out)
        else:
            yield (out.image_sha256, out)


class _ResolveBatch(beam.DoFn):
    """Resolves a batch of image refs on a thread pool: reading, hashing and
    decoding release the GIL, so one worker uses every core for this stage."""

    def __init__(self, cfg: build.BuildConfig, out_dir: str) -> None:
        self.cfg, self.out_dir = cfg, out_dir

    def setup(self) -> None:
        self.pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1)
        self.timer = _timer("image")

    def teardown(self) -> None:
        self.pool.shutdown()

    def process(self, batch: list[tuple[str, Sequence[build.Keyed]]]) -> Iterator[Any]:
        start = time.perf_counter()
        results = list(self.pool.map(lambda e: list(_resolve(e, self.cfg, self.out_dir)),
                                     batch))
        self.timer.inc(int((time.perf_counter() - start) * 1e6))
        for outs in results:
            for out in outs:
                yield beam.pvalue.TaggedOutput(REJECT, out) if isinstance(out, Reject) else out


def _resolve(element: tuple[str, Sequence[build.Keyed]], cfg: build.BuildConfig,
             out_dir: str) -> Iterator[Any]:
    ref, records = element
    records = sorted(records, key=lambda k: (k.record.source, k.record.record))
    image, rejects = build.resolve_image(ref, records, cfg, out_dir)
    yield from rejects
    rejected = {(r.source, r.record) for r in rejects}
    if image is not None:
        yield beam.pvalue.TaggedOutput("image", (image.sha256, image))
        for keyed in records:
            if (keyed.record.source, keyed.record.record) not in rejected:
                yield (image, keyed)


def _join(element: tuple[str, dict[str, list[Any]]], cfg: build.BuildConfig,
          previous: build.Previous) -> Iterator[Any]:
    _, grouped = element
    if grouped["annotations"]:
        sample = build.join_image(grouped["images"], grouped["annotations"], cfg)
        kept = build.exclude_known(sample, previous)
        yield from kept if isinstance(kept, list) else [kept]


def _assign(sizes: list[tuple[str, int]], cfg: build.BuildConfig, start: int) -> dict[str, int]:
    return assign_shards(dict(sizes), cfg.shards.max_samples, cfg.shards.max_bytes, start)


def _finish(_: Any, written: list[Any], rejects: list[Reject], read: list[tuple[str, int]],
            accepted: list[tuple[str, int]], out_dir: str, cfg: build.BuildConfig,
            previous: build.Previous) -> dict[str, Any]:
    return build.finish(out_dir, cfg, "beam", written, rejects, Counter(dict(read)),
                        Counter(dict(accepted)), previous)


def run(cfg: build.BuildConfig, out_dir: str, beam_args: Sequence[str] = (),
        workers: int = 1, mode: str = "resume") -> None:
    """Build ``out_dir`` from ``cfg.raw_dir`` with Beam."""
    args = list(beam_args)
    if not any(a.startswith("--runner") for a in args):
        args += ["--runner=FnApiRunner"]
        if workers > 1:
            args += ["--direct_running_mode=multi_processing",
                     f"--direct_num_workers={workers}"]
    files = [str(p) for p in build.input_files(cfg.raw_dir)]
    previous = build.prepare_output(out_dir, mode)
    p = beam.Pipeline(options=PipelineOptions(args))
    raw = (p | "Files" >> beam.Create(files)
           | "Read" >> beam.ParDo(_Tag("read", lambda f: build.read_raw(Path(f))))
           .with_outputs(REJECT, main="records"))
    read = ((raw.records, raw[REJECT]) | "AllRead" >> beam.Flatten()
            | "SourceOf" >> beam.Map(lambda r: r.source)
            | "CountRead" >> beam.combiners.Count.PerElement())
    checked = (raw.records
               | "Check" >> beam.ParDo(_Tag("check", lambda r: [build.check_record(r)]))
               .with_outputs(REJECT, main="keyed"))
    resolved = (checked.keyed
                | "ByImageRef" >> beam.Map(lambda k: (k.image, k))
                | "GroupByRef" >> beam.GroupByKey()
                | "Resolve" >> beam.ParDo(_Tag("image", lambda e: _resolve(e, cfg, out_dir)))
                .with_outputs(REJECT, "image", main="pairs"))
    annotated = (resolved.pairs
                 | "Annotate" >> beam.ParDo(_Annotate(cfg)).with_outputs(REJECT,
                                                                         main="anns"))
    joined = ({"images": resolved.image, "annotations": annotated.anns}
              | "JoinByHash" >> beam.CoGroupByKey()
              | "Sample" >> beam.ParDo(_Tag("join", lambda e: _join(e, cfg, previous)))
              .with_outputs(REJECT, main="samples"))
    samples = joined.samples
    mapping = (samples | "Sizes" >> beam.Map(lambda s: (s.key, build.planned_size(s)))
               | "AllSizes" >> beam.combiners.ToList()
               | "Assign" >> beam.Map(_assign, cfg, previous.start_index))
    written = (samples
               | "ShardOf" >> beam.Map(lambda s, m: (m[s.key], s),
                                       beam.pvalue.AsSingleton(mapping))
               | "GroupByShard" >> beam.GroupByKey()
               | "WriteShard" >> beam.ParDo(_Tag("write", lambda e: [build.write_or_keep(
                   *e, out_dir, cfg, previous)])))
    accepted = (samples
                | "SourcesOf" >> beam.FlatMap(lambda s: [x["file"]
                                                         for x in s.json["sources"]])
                | "CountAccepted" >> beam.combiners.Count.PerElement())
    rejects = ((raw[REJECT], checked[REJECT], resolved[REJECT], annotated[REJECT],
                joined[REJECT]) | "AllRejects" >> beam.Flatten())
    (p | "Once" >> beam.Create([None])
     | "Finish" >> beam.Map(_finish, beam.pvalue.AsList(written),
                            beam.pvalue.AsList(rejects), beam.pvalue.AsList(read),
                            beam.pvalue.AsList(accepted), out_dir, cfg, previous))
    result = p.run()
    result.wait_until_finish()
    counters = result.metrics().query(MetricsFilter().with_namespace(STAGE_TIME))["counters"]
    build.record_stage_seconds(out_dir, {c.key.metric.name: c.committed / 1e6
                                         for c in counters})
