"""The ``molmo`` command line: thin wrappers over the library in ``molmo/``.

Every user error is one line on stderr and exit status 2, as for ``pixmo``
(``pixmo.command_line``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pixmo.command_line import command_parser, run_command
from pixmo.errors import PixmoError

if TYPE_CHECKING:
    from PIL.Image import Image

    from molmo.generate import GenerationConfig
    from molmo.predict import Predictor


def _device(name: str) -> str:
    """An argparse type: a torch device this machine has (checked before a model loads)."""
    import torch

    try:
        device = torch.device(name)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"not a torch device: {name!r}") from None
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(f"{name!r}, but torch sees "
                                         f"{torch.cuda.device_count()} CUDA device(s)")
    return name


def _add_device(p: argparse.ArgumentParser) -> None:
    """``--device``, as ``predict`` and ``eval`` take it."""
    p.add_argument("--device", type=_device, default="cpu")


def cmd_convert(args: argparse.Namespace) -> int:
    from molmo.model.weights import convert

    out = convert(args.src, args.dst, to=args.to, overwrite=args.overwrite)
    print(f"wrote {out} ({args.to} layout)")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from molmo.generate import GenerationConfig

    config = GenerationConfig(max_new_tokens=args.max_new_tokens)
    if (args.image is None) == (args.inputs is None):
        raise PixmoError("give one of --image or --inputs", field="--image")
    if args.inputs is not None:
        return _predict_many(args, config)
    if args.prompt is None:
        raise PixmoError("required with --image", field="--prompt")
    image = _read_image(args.image)
    predictor, config = _predictor(args, config)
    answer = predictor(image, args.prompt, config)
    print(answer.text)
    if answer.points:
        from pixmo.report.draw import render_points

        out = args.out or f"{args.image.rsplit('.', 1)[0]}-points.png"
        with open(args.image, "rb") as fh:
            render_points(fh.read(), [{"label": "answer", "points": [list(p) for p in
                                                                     answer.points]}], out)
        print(f"wrote {out} with {len(answer.points)} point(s)", file=sys.stderr)
    return 0


def _predict_many(args: argparse.Namespace, config: GenerationConfig) -> int:
    """``predict --inputs``: every (image, prompt) pair, answered as JSON lines in ``--out``."""
    import itertools

    from molmo.predict import predict_file, read_requests

    if args.out is None:
        raise PixmoError("required with --inputs (a .jsonl file)", field="--out")
    if args.batch_size < 1:
        raise PixmoError(f"must be at least 1, got {args.batch_size}", field="--batch-size")
    requests = read_requests(args.inputs, args.prompt)
    first = next(requests, None)  # a missing file or folder fails before the model loads
    predictor, config = _predictor(args, config)
    todo = itertools.chain([] if first is None else [first], requests)
    answered, errors = predict_file(predictor, todo, args.out, batch_size=args.batch_size,
                                    config=config)
    print(f"wrote {args.out}: {answered} answered, {errors} error(s)", file=sys.stderr)
    return 0


def _predictor(args: argparse.Namespace, config: GenerationConfig
               ) -> tuple[Predictor, GenerationConfig]:
    """The model on ``--device`` (default: cuda when torch sees one) in ``--dtype`` (default:
    float32 on CPU, bfloat16 on CUDA), and ``config`` stopping at its tokenizer's EOS."""
    import dataclasses

    import torch

    from molmo.predict import DTYPES, Predictor

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = args.dtype or ("float32" if torch.device(device).type == "cpu" else "bfloat16")
    predictor = Predictor(args.checkpoint, tokenizer=args.tokenizer, device=device,
                          dtype=DTYPES[dtype])
    return predictor, dataclasses.replace(config, stop_token_ids=(predictor.tokenizer.eos_id,))


def _read_image(path: str) -> Image:
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as opened:
            return ImageOps.exif_transpose(opened).convert("RGB")
    except OSError as exc:  # missing, unreadable or not an image: before the model loads
        raise PixmoError(f"cannot read the image: {exc.strerror or exc}", file=path) from exc


def cmd_train(args: argparse.Namespace) -> int:
    from molmo.train.loop import main_train

    return main_train(args.config, resume=args.resume, print_config=args.print_config)


def cmd_export(args: argparse.Namespace) -> int:
    from molmo.train.loop import export_checkpoint

    out = export_checkpoint(args.checkpoint, args.dst, overwrite=args.overwrite,
                            layout=args.format)
    print(f"wrote {out} ({args.format} layout)")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from molmo.train.config import TrainConfig
    from molmo.train.plan import parse_size, plans, render

    cfg = TrainConfig.from_yaml(args.config)
    memory = parse_size(args.gpu_memory) if args.gpu_memory is not None else None
    rows = plans(cfg, devices=args.devices, gpu=not args.cpu, gpu_memory=memory)
    print(render(cfg, rows, as_json=args.json))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import json

    from molmo.eval.heldout import evaluate_run

    if args.benchmark is not None:
        return _eval_benchmark(args)

    result = evaluate_run(args.config, checkpoint=args.checkpoint, out_dir=args.out,
                          device=args.device)
    print(json.dumps(result, indent=2))
    return 0


def _eval_benchmark(args: argparse.Namespace) -> int:
    """``eval --benchmark NAME DATASET --checkpoint DIR``: a published benchmark."""
    import os

    from molmo.eval.benchmarks import table
    from molmo.eval.runner import BenchmarkConfig, evaluate_benchmark

    if args.checkpoint is None:
        raise PixmoError("required with --benchmark", field="--checkpoint")
    out = args.out or os.path.join(args.checkpoint, "eval", args.benchmark)
    cfg = BenchmarkConfig(args.benchmark, args.config, args.checkpoint, out,
                          batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                          limit=args.limit)
    summary = evaluate_benchmark(cfg, device=args.device, dtype=args.dtype,
                                 tokenizer=args.tokenizer)
    if summary is not None:  # rank 0
        print(table(summary))
        print(f"wrote {out}/predictions.jsonl and summary.json", file=sys.stderr)
    return 0


def _add_predict(sub: argparse._SubParsersAction) -> None:
    """``molmo predict``: one --image, or many --inputs as JSON lines."""
    p = sub.add_parser("predict", help="answer a prompt about an image (points are drawn), "
                       "or about many (--inputs) as JSON lines")
    p.add_argument("--checkpoint", required=True, help="official or our checkpoint directory")
    p.add_argument("--image", default=None)
    p.add_argument("--inputs", default=None, help="a folder of images (each asked --prompt) "
                   "or a JSONL file of {image, prompt, id?}, image paths relative to it")
    p.add_argument("--prompt", default=None, help="the question (JSONL: for lines without one)")
    p.add_argument("--tokenizer", default=None, help="tokenizer directory (default: checkpoint)")
    _add_device(p)
    p.set_defaults(device=None)  # predict: cuda when torch sees one, else cpu
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                   help="default float32 on CPU, bfloat16 on CUDA")
    p.add_argument("--batch-size", type=int, default=8, help="--inputs answered together")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--out", default=None, help="--image: PNG with the answer's points drawn; "
                   "--inputs: the JSON lines (written as OUT.partial, renamed when done)")
    p.set_defaults(handler=cmd_predict,
                   options={"GenerationConfig.max_new_tokens": "--max-new-tokens"})


def _add_benchmark(p: argparse.ArgumentParser) -> None:
    """``eval --benchmark`` and the options only it reads."""
    from molmo.eval.benchmarks import BENCHMARKS, MAX_NEW_TOKENS

    p.add_argument("--benchmark", choices=sorted(BENCHMARKS), default=None,
                   help="score as the Molmo paper does (official prompts and metrics)")
    p.add_argument("--batch-size", type=int, default=8, help="--benchmark: answers generated "
                   "together")
    p.add_argument("--max-new-tokens", type=int, default=MAX_NEW_TOKENS)
    p.add_argument("--limit", type=int, default=None, help="--benchmark: the first N questions")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                   help="--benchmark: default float32 on CPU, bfloat16 on CUDA")
    p.add_argument("--tokenizer", default=None, help="tokenizer directory (default: checkpoint)")


def build_parser() -> argparse.ArgumentParser:
    parser, sub = command_parser("molmo", "Molmo models: load, convert, run and train.")

    p = sub.add_parser("convert", help="convert a checkpoint between the official Hugging "
                       "Face layout and ours")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--to", required=True, choices=("ours", "official"))
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(handler=cmd_convert)

    _add_predict(sub)

    p = sub.add_parser("train", help="train on PixMo shards (also under torchrun)")
    p.add_argument("config", help="training YAML (see configs/)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config with every default, then exit")
    p.set_defaults(handler=cmd_train)

    p = sub.add_parser("export", help="a training checkpoint as a model directory (LoRA "
                       "adapters merged into their base)")
    p.add_argument("checkpoint", help="run_dir/checkpoints/step_N")
    p.add_argument("dst")
    p.add_argument("--format", choices=("ours", "official"), default="ours",
                   help="official: the hub layout that Ai2's remote code and vLLM serve")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(handler=cmd_export)

    p = sub.add_parser("plan", help="memory per device of a training config: full, FSDP, "
                       "LoRA, with and without activation checkpointing")
    p.add_argument("config", help="training YAML")
    p.add_argument("--gpu-memory", default=None, help="e.g. 80GiB: the largest micro-batch "
                   "that fits")
    p.add_argument("--devices", type=int, default=8, help="FSDP ranks (default 8)")
    p.add_argument("--cpu", action="store_true", help="a CPU run (fp32 activations)")
    p.add_argument("--json", action="store_true", help="bytes as JSON")
    p.set_defaults(handler=cmd_plan)

    p = sub.add_parser("eval", help="pointing F1 and counting accuracy on held-out shards, "
                       "or a published benchmark (--benchmark, also under torchrun)")
    p.add_argument("config", help="the training YAML (its eval section names the data); with "
                   "--benchmark, the dataset `pixmo import` wrote")
    p.add_argument("--checkpoint", default=None, help="model directory (default RUN_DIR/model)")
    p.add_argument("--out", default=None, help="output folder (default RUN_DIR/eval/final; "
                   "--benchmark: CHECKPOINT/eval/BENCHMARK, resumed when rerun)")
    _add_device(p)
    _add_benchmark(p)
    p.set_defaults(handler=cmd_eval, options={
        f"BenchmarkConfig.{name}": f"--{name.replace('_', '-')}"
        for name in ("batch_size", "max_new_tokens", "limit")})
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command("molmo", args, lambda: args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
