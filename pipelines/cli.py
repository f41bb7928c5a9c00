"""The ``pixmo`` command line.

Each command parses its flags, calls one library function and renders the
result. Every user error is one line on stderr and exit status 2: a bad flag
(argparse), a bad value (a config's ``ConfigError``, named by the option that
gave it), bad input (``PixmoError``) or a path that cannot be read or written
(``OSError``); ``pixmo.command_line`` does that for both command lines.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from pipelines.collect import add_collect
from pipelines.options import SPEECH_OPTIONS, _add_speech_options, _human_bytes, _table
from pixmo.command_line import command_parser, run_command

if TYPE_CHECKING:
    from pixmo.command_line import Subcommands
    from pixmo.speech.config import SpeechConfig

Command = Callable[..., int]  # (args) or, for a passthrough command, (args, extra flags)


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


def build_parser() -> argparse.ArgumentParser:
    from pipelines.build_command import add_build

    parser, sub = command_parser("pixmo", "Build and check PixMo-style multimodal datasets.")
    for add in (_add_dataset_commands, _add_import, _add_synth, _add_report, _add_transcribe,
                add_build, add_collect):
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
