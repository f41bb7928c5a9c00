"""The ``pixmo`` command line.

Each command parses its flags, calls one library function and renders the
result. Every user error is one line on stderr and exit status 2: a bad flag
(argparse), a bad value (a config's ``ConfigError``, named by the option that
gave it), bad input (``PixmoError``) or a path that cannot be read or written
(``OSError``); ``pixmo.command_line`` does that for both command lines.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.collect import add_collect
from pixmo.command_line import command_parser, run_command
from pixmo.errors import ConfigError, PixmoError

if TYPE_CHECKING:
    from pixmo.build import BuildConfig
    from pixmo.command_line import Subcommands
    from pixmo.speech.config import SpeechConfig

Command = Callable[..., int]  # (args) or, for a passthrough command, (args, extra flags)


def _number(kind: type[int] | type[float], least: float,
            strict: bool = False) -> Callable[[str], float]:
    """An argparse type for a flag that goes to an engine as a plain argument, not into a
    config that checks it: a finite ``kind`` >= ``least`` (> with ``strict``)."""
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"must be {'an integer' if kind is int else 'a number'}, got {text!r}") from None
        if not math.isfinite(value) or value < least or (strict and value == least):
            raise argparse.ArgumentTypeError(f"must be {'>' if strict else '>='} {least}, "
                                             f"got {text}")
        return value
    return parse


def _table(rows: Sequence[Sequence[object]], header: Sequence[str]) -> str:
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if c.replace(",", "").replace(".", "").isdigit() else c.ljust(w)
            for c, w in zip(row, widths, strict=True)
        ).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def cmd_inspect(args: argparse.Namespace) -> int:
    from pixmo.dataset.verify import summarize

    summary = summarize(args.dir)
    out = [f"dataset {summary.name}: {summary.samples:,} samples in {len(summary.shards)} "
           f"shards, {_human_bytes(summary.bytes)}", ""]
    out.append(_table([(s.shard, f"{s.samples:,}", _human_bytes(s.bytes), s.first_key or "-",
                        s.last_key or "-") for s in summary.shards],
                      ("shard", "samples", "size", "first key", "last key")))
    out += ["", _table([(kind, f"{n:,}") for kind, n in summary.counts.items()],
                       ("annotations", "count"))]
    if summary.collection_methods:
        out += ["", _table([(m, f"{n:,}") for m, n in summary.collection_methods.items()],
                           ("point collection", "label sets"))]
    rejects = summary.rejects_by_reason
    out += ["", _table([(r, f"{n:,}") for r, n in rejects.items()], ("rejected", "records"))
            if rejects else "rejected: none"]
    failures = summary.failures_by_reason  # records accepted, a stage's output missing
    out += ["", _table([(r, f"{n:,}") for r, n in failures.items()], ("failed", "samples"))
            if failures else "failed: none"]
    if summary.example is not None:
        out += ["", f"first sample ({summary.example.get('key')}):",
                json.dumps(summary.example, indent=2, ensure_ascii=False)]
    print("\n".join(out))
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from pixmo.dataset.verify import verify

    problems = verify(args.dir)
    if problems:
        print(f"{args.dir}: {len(problems)} problem(s)")
        for problem in problems:
            print(f"  {problem}")
        return 1
    print(f"{args.dir}: ok")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from pixmo.dataset.verify import IMAGE_EXTENSIONS, find_sample
    from pixmo.report.draw import render_points

    sample = find_sample(args.dir, args.key)
    image = next(data for ext, data in sample.files.items() if ext in IMAGE_EXTENSIONS)
    out = render_points(image, sample.json["points"], args.out)
    labels = len(sample.json["points"])
    print(f"wrote {out} ({labels} label set{'s' if labels != 1 else ''})")
    return 0


def cmd_transcribe(args: argparse.Namespace) -> int:
    from pixmo.speech.transcribe import transcribe_files

    cfg = _speech_config(args, backend=args.backend, model=args.model)
    for row in transcribe_files(args.audio, cfg):
        print(json.dumps(row, ensure_ascii=False), flush=True)
    return 0


# options of ``pixmo build`` by the config key they set (over ``--config``'s file)
BUILD_OPTIONS = {"raw_dir": "--raw", "name": "--name", "speech.model": "--whisper-model",
                 "speech.device": "--device", "speech.cpu_threads": "--cpu-threads",
                 "speech.qc.min_speech_s": "--min-speech-s",
                 "shards.max_samples": "--shard-samples", "shards.max_bytes": "--shard-bytes"}


def _build_config(args: argparse.Namespace) -> BuildConfig:
    """``--config``'s file (if any) with the options given put over it; the dataset is
    named after the output folder unless ``--name`` or the file names it."""
    from pixmo.build import BuildConfig
    from pixmo.config import read_yaml

    overrides = {key: getattr(args, option[2:].replace("-", "_"))
                 for key, option in BUILD_OPTIONS.items()}
    overrides = {key: value for key, value in overrides.items() if value is not None}
    if args.no_transcribe:
        overrides["transcribe"] = False
    given = read_yaml(args.config) if args.config is not None else {}
    given = given if isinstance(given, dict) else {}
    if "raw_dir" not in overrides and "raw_dir" not in given:
        raise PixmoError("--raw is required (or raw_dir in --config)")
    if "name" not in overrides and "name" not in given and args.out:
        overrides["name"] = Path(args.out.rstrip("/")).name
    return BuildConfig.load(args.config, overrides, BUILD_OPTIONS)


def cmd_build(args: argparse.Namespace, beam_args: Sequence[str]) -> int:
    from pixmo.build import input_files, refuse_other_config
    from pixmo.dataset.tables import read_dataset_json
    from pixmo.remote import Folder

    cfg = _build_config(args)
    if args.print_config:
        print(cfg.to_yaml(), end="")
        return 0
    if not args.out:
        raise PixmoError("the following arguments are required: --out")
    input_files(cfg.raw_dir)  # a wrong --raw fails here, before an engine starts
    refuse_other_config(args.out, cfg, args.mode)  # and a resume with another config
    if args.engine == "ray":
        if beam_args:
            raise PixmoError(f"unrecognized arguments for --engine ray: {' '.join(beam_args)}")
        from pipelines import ray as ray_engine

        ray_engine.run(cfg, args.out, address=args.ray_address, workers=args.workers,
                       gpus_per_worker=args.gpus_per_worker, mode=args.mode)
    else:
        if args.gpus_per_worker:
            raise ConfigError("is for --engine ray", field="gpus_per_worker")
        from pipelines.beam import graph as beam
        from pipelines.beam.progress import Progress

        shown = beam.runs_in_process(beam_args)
        with (Progress(beam.STAGES, interval=args.progress_interval) if shown
              else contextlib.nullcontext()):
            beam.run(cfg, args.out, beam_args, workers=args.workers, mode=args.mode,
                     shuffle_dir=args.shuffle_dir)
    with Folder(args.out).local_copy("dataset.json") as path:
        description = read_dataset_json(path)
    counts = description["counts"]
    print(f"built {args.out}: {counts['samples']:,} samples in {counts['shards']} shards, "
          f"{_human_bytes(counts['bytes'])}")
    print(_table([(e["file"], e["read"], e["accepted"], e["rejected"])
                  for e in description["ledger"]], ("input", "read", "accepted", "rejected")))
    if description.get("rejects_by_reason"):
        print(_table(list(description["rejects_by_reason"].items()), ("rejected", "records")))
    if description.get("stage_seconds"):
        print(_table([(stage, f"{s:.2f}") for stage, s in description["stage_seconds"].items()],
                     ("stage", "seconds")))
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from pixmo.dataset.writer import ShardConfig
    from pixmo.release.importer import ImportConfig, import_release

    cfg = ImportConfig(workers=args.workers, cache_dir=args.cache_dir,
                       sha256_policy=args.sha256_policy,
                       shards=ShardConfig(max_samples=args.shard_samples))
    report = import_release(args.subset, args.parquet, args.out, config=cfg)
    print("\n".join(report.lines()))
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from pixmo.synth.config import SynthConfig
    from pixmo.synth.raw import synthesize

    report = synthesize(args.out, scenes=args.scenes, seed=args.seed,
                        config=SynthConfig(first_index=args.first_index,
                                           bad_records=not args.no_bad_records))
    print(f"wrote {args.out}: {report.images} images, {report.caption_sessions} caption "
          f"sessions ({report.audio_seconds:.0f} s of speech), {report.point_annotations} "
          f"pointing annotations, {report.bad_records} deliberately bad records; the truth is "
          f"in {report.truth}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from pixmo.report.page import write_report

    out = write_report(args.dir, args.out, run_dir=args.run, eval_dataset_dir=args.eval_data)
    print(f"wrote {out}")
    return 0


SPEECH_OPTIONS = {"QCConfig.min_speech_s": "--min-speech-s",
                  "SpeechConfig.cpu_threads": "--cpu-threads"}


def _add_speech_options(p: argparse.ArgumentParser, min_speech_help: str,
                        defaults: bool = True) -> None:
    """The Whisper options ``transcribe`` and ``build`` share (``SPEECH_OPTIONS``); without
    ``defaults`` an option not given is None (the config file's value or default then)."""
    p.add_argument("--device", default="auto" if defaults else None,
                   choices=("auto", "cpu", "cuda"))
    p.add_argument("--cpu-threads", type=int, default=1 if defaults else None,
                   help="threads of one Whisper model on CPU; recorded in each transcript "
                   "(more cores: more --workers)")
    p.add_argument("--min-speech-s", type=float, default=60.0 if defaults else None,
                   help=min_speech_help)


def _speech_config(args: argparse.Namespace, **fields: str | None) -> SpeechConfig:
    """The ``SpeechConfig`` of ``_add_speech_options``'s flags, and ``fields``."""
    from pixmo.speech.config import QCConfig, SpeechConfig

    return SpeechConfig(device=args.device, cpu_threads=args.cpu_threads,
                        qc=QCConfig(min_speech_s=args.min_speech_s), **fields)


def _add_dataset_commands(sub: Subcommands) -> None:
    p = sub.add_parser("inspect", help="counts, shard sizes, annotation kinds, one sample")
    p.add_argument("dir", help="dataset directory")
    p.set_defaults(handler=cmd_inspect)

    p = sub.add_parser("validate", help="check shards, sample JSON, manifest and dataset.json")
    p.add_argument("dir", help="dataset directory")
    p.set_defaults(handler=cmd_validate)

    p = sub.add_parser("show", help="draw one sample's image with its points")
    p.add_argument("dir", help="dataset directory")
    p.add_argument("--key", required=True, help="sample key")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.set_defaults(handler=cmd_show)


def _add_import(sub: Subcommands) -> None:
    from pixmo.release.subsets import SUBSETS

    p = sub.add_parser("import", help="released PixMo parquet files to shards (images fetched "
                       "and verified; failures retried on the next run)")
    p.add_argument("subset", choices=sorted(SUBSETS))
    p.add_argument("--parquet", nargs="+", required=True, help="released parquet file(s)")
    p.add_argument("--out", required=True, help="output dataset directory")
    p.add_argument("--workers", type=int, default=16, help="download threads")
    p.add_argument("--cache-dir", default=None, help="image cache (default OUT/image_cache)")
    p.add_argument("--sha256-policy", default=None, choices=("strict", "flag", "none"),
                   help="override the subset's own policy")
    p.add_argument("--shard-samples", type=int, default=1000)
    p.set_defaults(handler=cmd_import, options={"ImportConfig.workers": "--workers",
                                                "ShardConfig.max_samples": "--shard-samples"})


def _add_synth(sub: Subcommands) -> None:
    p = sub.add_parser("synth", help="synthetic raw annotations: scenes, spoken descriptions, "
                       "click logs and deliberately bad records")
    p.add_argument("--out", required=True, help="raw directory to create")
    p.add_argument("--scenes", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--first-index", type=int, default=0,
                   help="number scenes from here (a held-out split of the same seed)")
    p.add_argument("--no-bad-records", action="store_true")
    p.set_defaults(handler=cmd_synth, options={"scenes": "--scenes", "seed": "--seed",
                                               "SynthConfig.first_index": "--first-index"})


def _add_report(sub: Subcommands) -> None:
    p = sub.add_parser("report", help="a self-contained HTML page about a dataset (and a run)")
    p.add_argument("dir", help="dataset directory")
    p.add_argument("--out", required=True, help="HTML file to write")
    p.add_argument("--run", default=None, help="training run directory (loss curve, eval)")
    p.add_argument("--eval-data", default=None, help="held-out dataset the eval ran on")
    p.set_defaults(handler=cmd_report)


def _add_transcribe(sub: Subcommands) -> None:
    p = sub.add_parser("transcribe", help="transcribe audio files, one JSON line each")
    p.add_argument("audio", nargs="+", help="audio files (wav, flac, ogg/opus, mp3, m4a, webm)")
    p.add_argument("--backend", default="faster-whisper",
                   choices=("faster-whisper", "openai-whisper", "transformers"))
    p.add_argument("--model", default=None, help="model name or path (default: bundled tiny.en)")
    _add_speech_options(p, "shortest accepted speech (PixMo: 60)")
    p.set_defaults(handler=cmd_transcribe, options=SPEECH_OPTIONS)


def _add_build(sub: Subcommands) -> None:
    p = sub.add_parser("build", help="raw annotations to shards with Beam or Ray; unknown "
                       "flags go to Beam, e.g. --runner DataflowRunner --project P (a remote "
                       "runner gets the toolkit's wheel as --extra_package)")
    p.add_argument("--config", default=None,
                   help="build config YAML: any field of BuildConfig (see --print-config); "
                   "options given here override it")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config with every default, then exit")
    p.add_argument("--raw", default=None, help="raw input directory, a path or an fsspec "
                   "URL (s3://, gs://, ...); or raw_dir in --config")
    p.add_argument("--out", default=None,
                   help="output dataset directory, a path or an fsspec URL")
    p.add_argument("--engine", default="beam", choices=("beam", "ray"))
    p.add_argument("--mode", default="resume", choices=("resume", "overwrite", "extend"),
                   help="resume: keep committed shards (default); overwrite: start again; "
                   "extend: add new images as new shards")
    p.add_argument("--workers", type=_number(int, 1), default=1,
                   help="Beam: local processes for the image, annotation (Whisper) and "
                   "shard-writing stages; Ray: transcription actors, at most the cluster's "
                   "CPUs")
    p.add_argument("--progress-interval", type=_number(float, 0, strict=True), default=10.0,
                   help="Beam: seconds between progress lines when stderr is not a terminal")
    p.add_argument("--shuffle-dir", default=None,
                   help="Beam, local runner: where groupings spill (default: the system's "
                   "temporary folder; needs about 1 KiB per record, removed at the end)")
    p.add_argument("--ray-address", default=None, help="join a Ray cluster (e.g. auto)")
    p.add_argument("--gpus-per-worker", type=_number(float, 0), default=0,
                   help="Ray: GPUs for each transcription actor")
    p.add_argument("--name", default=None, help="dataset name (default: the out dir's name)")
    p.add_argument("--no-transcribe", action="store_true", help="skip caption sessions' audio")
    p.add_argument("--whisper-model", default=None, help="Whisper model name or path")
    _add_speech_options(p, "shortest accepted speech per session (PixMo: 60)", defaults=False)
    p.add_argument("--shard-samples", type=int, default=None, help="default 1000")
    p.add_argument("--shard-bytes", type=int, default=None, help="default 1 GiB")
    p.set_defaults(handler=cmd_build, passthrough=True,
                   options={**SPEECH_OPTIONS, "ShardConfig.max_samples": "--shard-samples",
                            "ShardConfig.max_bytes": "--shard-bytes", "workers": "--workers",
                            "gpus_per_worker": "--gpus-per-worker"})


def build_parser() -> argparse.ArgumentParser:
    parser, sub = command_parser("pixmo", "Build and check PixMo-style multimodal datasets.")
    for add in (_add_dataset_commands, _add_import, _add_synth, _add_report, _add_transcribe,
                _add_build, add_collect):
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; its config fields are named by the ``options`` that fill them.
    Engines and Whisper log every bundle and clip at INFO: quiet unless ``-v``."""
    args, extra = build_parser().parse_known_args(argv)
    passthrough = getattr(args, "passthrough", False)
    if extra and not passthrough:
        build_parser().error(f"unrecognized arguments: {' '.join(extra)}")
    handler: Command = args.handler
    return run_command("pixmo", args,
                       lambda: handler(args, extra) if passthrough else handler(args),
                       quiet=("apache_beam", "faster_whisper", "ray"))


if __name__ == "__main__":
    sys.exit(main())
