"""The ``pixmo build`` command: its options, the ``BuildConfig`` they resolve to (over a
``--config`` file), running an engine on it and the summary it prints.

A part of the ``pixmo`` command line (``pipelines/cli.py`` adds it), in its own module
because it has most options of any command: every one of them sets a key of the config
file (``BUILD_OPTIONS``), so a file and the command line say the same things.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.options import SPEECH_OPTIONS, _add_speech_options, _human_bytes, _number, _table
from pixmo.errors import ConfigError, PixmoError

if TYPE_CHECKING:
    from pixmo.build import BuildConfig
    from pixmo.command_line import Subcommands

# options of ``pixmo build`` by the config key they set (over ``--config``'s file)
BUILD_OPTIONS = {"raw_dir": "--raw", "name": "--name", "speech.model": "--whisper-model",
                 "speech.device": "--device", "speech.cpu_threads": "--cpu-threads",
                 "speech.qc.min_speech_s": "--min-speech-s",
                 "shards.max_samples": "--shard-samples", "shards.max_bytes": "--shard-bytes",
                 "captions.method": "--caption-method", "captions.llm.base_url": "--caption-llm",
                 "captions.llm.model": "--caption-model",
                 "captions.llm.device": "--caption-device",
                 "captions.concurrency": "--caption-concurrency",
                 "captions.llm.clean_prompt": "--caption-clean-prompt",
                 "captions.llm.merge_prompt": "--caption-merge-prompt"}
# what errors name by option besides BUILD_OPTIONS: the section --caption-llm starts
ERROR_NAMES = {**BUILD_OPTIONS, "captions.llm": "--caption-llm"}


def _text_file(path: str) -> str:
    """An argparse type: the text of a prompt file."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise argparse.ArgumentTypeError(f"cannot read {path}: "
                                         f"{getattr(e, 'strerror', None) or e}") from None


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
    captions = given.get("captions") if isinstance(given.get("captions"), dict) else {}
    if "captions.llm.base_url" in overrides and "captions.method" not in overrides \
            and "method" not in captions:  # --caption-llm alone means captions from it
        overrides["captions.method"] = "llm"
    if "name" not in overrides and "name" not in given and args.out:
        overrides["name"] = Path(args.out.rstrip("/")).name
    return BuildConfig.load(args.config, overrides, ERROR_NAMES)


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
    if cfg.captions.method == "llm" and cfg.captions.llm and cfg.captions.llm.local:
        from pixmo.llm import local_tokenizer

        local_tokenizer(cfg.captions.llm.local)  # and a caption model workers cannot load
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


def _add_caption_options(p: argparse.ArgumentParser) -> None:
    """How ``build`` turns transcripts into captions (``CaptionConfig``)."""
    p.add_argument("--caption-method", default=None, choices=("cleanup", "llm"),
                   help="cleanup: deterministic, offline (default); llm: a language model "
                   "rewrites the transcripts, as PixMo did")
    p.add_argument("--caption-llm", default=None, metavar="URL",
                   help="an OpenAI-compatible endpoint (http://127.0.0.1:8000/v1; API key "
                   "from $PIXMO_CAPTION_API_KEY) or hf:DIR, a local transformers causal LM "
                   "run in the build's workers; implies --caption-method llm")
    p.add_argument("--caption-model", default=None, help="the model name the endpoint serves")
    p.add_argument("--caption-device", default=None, choices=("auto", "cpu", "cuda"),
                   help="where an hf:DIR model runs (default auto: CUDA when present)")
    p.add_argument("--caption-concurrency", type=int, default=None,
                   help="requests in flight at once per join worker (Beam's local runner: "
                   "one; Ray: one per free CPU), or prompts per batch for hf:DIR (default 8)")
    p.add_argument("--caption-clean-prompt", type=_text_file, default=None, metavar="FILE",
                   help="prompt for one transcript; must contain {transcript}")
    p.add_argument("--caption-merge-prompt", type=_text_file, default=None, metavar="FILE",
                   help="prompt for several transcripts; must contain {transcripts}")


def add_build(sub: Subcommands) -> None:
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
    _add_caption_options(p)
    p.set_defaults(handler=cmd_build, passthrough=True,
                   options={**SPEECH_OPTIONS, "ShardConfig.max_samples": "--shard-samples",
                            "ShardConfig.max_bytes": "--shard-bytes", "workers": "--workers",
                            "gpus_per_worker": "--gpus-per-worker"})
