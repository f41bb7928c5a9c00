"""Molmo-7B-D on the published benchmarks through ``molmo eval --benchmark``'s runner,
compared with the Molmo paper's numbers: one JSON line per benchmark with our score, the
published one, their ratio, and answers per second.

    python benchmarks/eval_official.py --checkpoint Molmo-7B-D-0924 \\
        --pixmo-count count-test --points-eval points-eval [--countbench countbench]
    torchrun --nproc_per_node 8 benchmarks/eval_official.py ...   # one slice per GPU
    python benchmarks/eval_official.py --dry-run   # the tiny official-layout fixture, on CPU

The datasets are what ``pixmo import`` writes (pixmo-count's test parquet, pixmo-points-eval,
countbenchqa); the checkpoint is the hub layout of allenai/Molmo-7B-D-0924. Nothing is
downloaded here. Published numbers: PixMo-Count and CountBenchQA accuracy from the paper's
Table 1 (recalled, not confirmed in a primary source: ../shared/reference/molmo.md section
8), pointing F1 from its Table 11 (pixmo.md section 5). The paper's pointing numbers were
made with the official PointingEval, which pairs points by distance before checking masks;
ours matches on the masks (molmo/eval/benchmarks.py), so expect pointing F1 at or above it.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from molmo.eval.runner import BenchmarkConfig, evaluate_benchmark
from molmo.train import parallel
from molmo.train.config import ParallelConfig

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "data" / "molmo_official_tiny"
PUBLISHED_7B_D = {"pixmo-count": 84.8, "countbench": 88.5, "pixmo-points-eval": 74.3}
METRIC = {"pixmo-count": "accuracy", "countbench": "accuracy", "pixmo-points-eval": "f1"}


def _image(i: int, size: tuple[int, int]) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, (40 * i % 256, 90, 160)).save(buf, format="PNG")
    return buf.getvalue()


def _samples() -> list:
    """Six images carrying the three benchmarks' annotations, as ``pixmo import`` stores them."""
    import hashlib

    from pixmo.dataset.format import ShardSample
    from pixmo.dataset.samples import sample_key
    from pixmo.points.masks import encode_mask

    out = []
    for i in range(6):
        data = _image(i, (48 + 8 * i, 40))
        digest = hashlib.sha256(data).hexdigest()
        width, height = 48 + 8 * i, 40
        mask = np.zeros((height, width), bool)
        mask[:, : width // 2] = True
        points = [{"label": "block", "points": [[25.0, 50.0]] if i % 2 else [], "count": i % 2,
                   "collection_method": "pointing", "annotators": [],
                   "masks": [encode_mask(mask)] if i % 2 else []},
                  {"label": "dots", "points": [], "count": 2 + i, "collection_method": "counting",
                   "annotators": []}]
        sample = {"schema_version": 1, "key": sample_key(digest),
                  "image": {"sha256": digest, "width": width, "height": height, "format": "png",
                            "source": f"fixture/{i}.png"},
                  "transcripts": [], "captions": [], "points": points,
                  "qa": [{"question": "How many birds are there?", "answer": str(2 + i),
                          "source": "countbenchqa"}],
                  "sources": [{"file": "fixture", "record": str(i + 1)}]}
        out.append(ShardSample(sample["key"], sample, {"png": data}))
    return out


def dry_run_inputs(root: Path) -> dict[str, str]:
    """The official-layout tiny fixture with a BPE tokenizer trained here, and one dataset
    that holds every benchmark's questions."""
    from molmo.preprocess.tokenizer import train_bpe_tokenizer
    from pixmo.dataset.writer import write_dataset

    ckpt = root / "checkpoint"
    shutil.copytree(FIXTURE, ckpt, ignore=shutil.ignore_patterns("ex_*", "layouts"))
    corpus = ["Counting the dots shows a total of 3.", "There are none.",
              '<point x="25.0" y="50.0" alt="block">block</point>'] * 20
    train_bpe_tokenizer(corpus, root / "tok", vocab_size=512)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(root / "tok" / name, ckpt / name)
    write_dataset(root / "data", _samples(), name="fixture")
    data = str(root / "data")
    return {"checkpoint": str(ckpt), "pixmo-count": data, "countbench": data,
            "pixmo-points-eval": data}


def evaluate(inputs: dict[str, str], out: Path, args: argparse.Namespace) -> None:
    """Each benchmark whose dataset is given, one JSON line each (rank 0 prints)."""
    for benchmark, published in PUBLISHED_7B_D.items():
        if not inputs.get(benchmark):
            continue
        cfg = BenchmarkConfig(benchmark, inputs[benchmark], inputs["checkpoint"],
                              str(out / benchmark), batch_size=args.batch_size,
                              max_new_tokens=args.max_new_tokens, limit=args.limit)
        start = time.perf_counter()
        summary = evaluate_benchmark(cfg, device=args.device, dtype=args.dtype)
        seconds = time.perf_counter() - start
        if summary is None:  # not rank 0
            continue
        ours = 100 * summary[METRIC[benchmark]]
        print(json.dumps({"benchmark": benchmark, "metric": METRIC[benchmark],
                          "examples": summary["examples"], "ours": round(ours, 2),
                          "published_7b_d": published, "ours/published": round(ours / published, 4),
                          "answers_per_s": round(summary["examples"] / seconds, 3),
                          "device": args.device}), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="Molmo-7B-D-0924, hub layout")
    parser.add_argument("--pixmo-count", help="`pixmo import pixmo-count` of the test parquet")
    parser.add_argument("--points-eval", help="`pixmo import pixmo-points-eval`")
    parser.add_argument("--countbench", help="`pixmo import countbenchqa`")
    parser.add_argument("--out", default="eval-official")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=192)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--device", default=None, help="default cuda (cpu for --dry-run)")
    parser.add_argument("--dtype", default=None, help="default bfloat16 on cuda")
    parser.add_argument("--dry-run", action="store_true", help="tiny fixture on CPU")
    args = parser.parse_args(argv)
    if args.dry_run:
        args.device, args.max_new_tokens = args.device or "cpu", min(args.max_new_tokens, 8)
        with tempfile.TemporaryDirectory() as tmp:
            evaluate(dry_run_inputs(Path(tmp)), Path(tmp) / "out", args)
        return 0
    if not args.checkpoint or not (args.pixmo_count or args.points_eval or args.countbench):
        parser.error("give --checkpoint and at least one dataset (or --dry-run)")
    args.device = args.device or ("cuda" if "LOCAL_RANK" not in os.environ
                                  else f"cuda:{os.environ['LOCAL_RANK']}")
    inputs = {"checkpoint": args.checkpoint, "pixmo-count": args.pixmo_count,
              "countbench": args.countbench, "pixmo-points-eval": args.points_eval}
    if "WORLD_SIZE" in os.environ:  # one process group for every benchmark
        parallel.init(ParallelConfig(device="cuda"))
    ok = False
    try:
        evaluate(inputs, Path(args.out), args)
        ok = True
    finally:
        parallel.close(wait=ok)  # after an error the other ranks may never arrive
    return 0


if __name__ == "__main__":
    sys.exit(main())
