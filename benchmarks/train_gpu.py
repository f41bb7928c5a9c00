"""Training on GPUs through the real loop (``torchrun -m molmo train``) for a ~1.3B Molmo
(``dense-1b``: 1.0B LLM + CLIP-L ViT), bf16: full fine-tuning and LoRA on one GPU, and DDP
(bf16 autocast, the baseline) against FSDP2 (bf16 parameters, fp32 gradient reduction) on every
local GPU. Prints one JSON line per mode: tokens/s, MFU, peak memory against ``molmo plan``'s
(planned/measured), and the FSDP/DDP and LoRA/full throughput ratios.

    python benchmarks/train_gpu.py                        # full,lora on 1 GPU; ddp,fsdp on all
    python benchmarks/train_gpu.py --modes lora --steps 15
    python benchmarks/train_gpu.py --dry-run              # the tiny preset on CPU: wiring only

Data are real PixMo shards written here: 640x480 PNG images (6-7 crops each), long captions
from a generated lexicon and point sets; the tokenizer is a BPE trained on those captions, and
the LLM vocabulary is set to its size (a few thousand rows instead of 50,304, so the LM head
is a smaller share of the FLOPs than in the released 1B models). Per-device batch 4, sequences
up to 2304 tokens, activation checkpointing per block; the first ``--warmup`` steps are
excluded from the medians. MFU is per device against the dense bf16 peak (989 TFLOP/s on
H100/H200), with the FLOP model of ``molmo/train/metrics.py``. The plan is for full-length
sequences and every crop, so it bounds what shorter batches reach.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml

from molmo.preprocess.tokenizer import MolmoTokenizer, train_bpe_tokenizer
from pixmo.dataset.format import ShardSample
from pixmo.dataset.samples import sample_key
from pixmo.dataset.writer import ShardConfig, write_dataset


def _sample(i: int, words: list[str], rng: np.random.Generator) -> ShardSample:
    import hashlib

    from PIL import Image

    pixels = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    data = buf.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    caption = " ".join(rng.choice(words, size=180)) + "."
    points = [[float(x), float(y)] for x, y in rng.uniform(5, 95, (3, 2)).round(1)]
    return ShardSample(key=sample_key(digest), files={"png": data}, json={
        "schema_version": 1, "key": sample_key(digest),
        "image": {"sha256": digest, "width": 640, "height": 480, "format": "png",
                  "source": f"images/{i:05d}.png"},
        "transcripts": [], "qa": [],
        "captions": [{"text": caption, "method": "cleanup"}],
        "points": [{"label": "dot", "points": points, "count": 3,
                    "collection_method": "pointing", "annotators": ["a1"]}],
        "sources": [{"file": "captions.jsonl", "record": str(i + 1)}],
    })


def prepare(root: Path, samples: int) -> tuple[Path, Path, int]:
    rng = np.random.default_rng(0)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = sorted({"".join(rng.choice(letters, size=int(rng.integers(3, 9))))
                    for _ in range(6000)})
    data = [_sample(i, words, rng) for i in range(samples)]
    write_dataset(root / "shards", data, name="bench", config=ShardConfig(max_samples=64))
    texts = [s.json["captions"][0]["text"] for s in data]
    train_bpe_tokenizer(texts, root / "tok", vocab_size=8192)
    vocab = MolmoTokenizer.from_dir(root / "tok").vocab_size
    return root / "shards", root / "tok", vocab


MODES = ("full", "lora", "ddp", "fsdp")


def config(root: Path, mode: str, shards: Path, tok: Path, vocab: int, gpus: int, steps: int,
           dry_run: bool = False) -> Path:
    """``full`` and ``lora`` run in one process (one GPU); ``ddp`` and ``fsdp`` on ``gpus``."""
    batch = 4
    model: dict[str, object] = {"preset": "dense-1b", "tokenizer": str(tok),
                                "overrides": {"llm": {"vocab_size": vocab,
                                                      "embedding_size": vocab}}}
    parallel = {"strategy": mode if mode in ("ddp", "fsdp") else "ddp", "precision": "bf16",
                "device": "cuda", "activation_checkpointing": True}
    preprocess: dict[str, object] = {"official_mask_quirk": False}
    if dry_run:  # the tiny preset at fp32 on CPU, fewer crops, shorter sequences
        batch, model["preset"] = 2, "tiny"
        parallel.update(precision="fp32", device="cpu")
        preprocess["max_crops"] = 2
    cfg = {
        "run_dir": str(root / mode), "steps": steps,
        "global_batch_size": batch * (gpus if mode in ("ddp", "fsdp") else 1),
        "model": model,
        "data": {"datasets": [{"name": "bench", "source": str(shards),
                               "tasks": {"tasks": ["long_caption", "point_count"]}}],
                 "batch_size": batch, "num_workers": 0 if dry_run else 4, "shuffle_block": 32,
                 "max_sequence_length": 1024 if dry_run else 2304},
        "preprocess": preprocess,
        "parallel": parallel,
        "checkpoint": {"interval": 0, "final": False, "export": False},
        "metrics": {"log_interval": 1, "tensorboard": False, "progress_bar": False},
    }
    if mode == "lora":
        cfg["lora"] = {"rank": 16, "alpha": 32, "targets": ["llm.attn", "llm.mlp"]}
    path = root / f"{mode}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def planned_gib(path: Path, mode: str, gpus: int, gpu: bool) -> float:
    """``molmo plan``'s peak per device for this run."""
    from molmo.train.config import TrainConfig
    from molmo.train.plan import plan

    cfg = TrainConfig.from_yaml(path)
    kind = {"full": "full", "ddp": "full", "lora": "lora", "fsdp": "fsdp"}[mode]
    return plan(cfg, mode=kind, devices=gpus if mode == "fsdp" else 1, gpu=gpu).peak / 2**30


def run(path: Path, run_dir: Path, procs: int, warmup: int) -> dict[str, float]:
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                    "--nproc_per_node", str(procs), "-m", "molmo", "train", str(path)],
                   check=True)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "loss" in r][warmup:]
    out = {key: statistics.median(r[key] for r in rows)
           for key in ("tokens_per_s", "samples_per_s", "step_time_s", "mfu") if key in rows[0]}
    out["tokens_per_step"] = statistics.median(r["tokens"] for r in rows)
    if "max_memory_gib" in rows[0]:
        out["max_memory_gib"] = max(r["max_memory_gib"] for r in rows)
    out["final_loss"] = rows[-1]["loss"]
    return out


def _ratios(results: dict[str, dict[str, float]]) -> None:
    for a, b in (("fsdp", "ddp"), ("lora", "full")):
        if {a, b} <= set(results):
            ratio = results[a]["tokens_per_s"] / results[b]["tokens_per_s"]
            print(f"{a}/{b} tokens/s ratio: {ratio:.3f}")


def main() -> None:
    import torch

    parser = argparse.ArgumentParser()
    parser.add_argument("--gpus", type=int, default=torch.cuda.device_count())
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--modes", default=None, help="of full,lora,ddp,fsdp (default: "
                        "full,lora, and ddp,fsdp with more than one GPU)")
    parser.add_argument("--dry-run", action="store_true",
                        help="the tiny preset on CPU, one process: checks the wiring")
    args = parser.parse_args()
    if args.dry_run:
        args.gpus, args.samples, args.steps, args.warmup = 1, 8, 2, 0
    elif args.gpus < 1:
        sys.exit("train_gpu.py needs at least one CUDA GPU (or --dry-run)")
    modes = (args.modes or ("full,lora,ddp,fsdp" if args.gpus > 1 else "full,lora")).split(",")
    if unknown := [m for m in modes if m not in MODES]:
        sys.exit(f"train_gpu.py: --modes: unknown mode {unknown[0]!r} (of {', '.join(MODES)})")
    device = "cpu" if args.dry_run else torch.cuda.get_device_name(0)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        shards, tok, vocab = prepare(root, args.samples)
        for mode in modes:
            procs = args.gpus if mode in ("ddp", "fsdp") else 1
            path = config(root, mode, shards, tok, vocab, procs, args.steps, args.dry_run)
            results[mode] = run(path, root / mode, procs, args.warmup)
            plan_gib = planned_gib(path, mode, procs, gpu=not args.dry_run)
            measured = results[mode].get("max_memory_gib")
            print(json.dumps({"mode": mode, "gpus": procs, "vocab": vocab, "device": device,
                              **results[mode], "planned_gib": round(plan_gib, 3),
                              "planned_over_measured": None if measured is None
                              else round(plan_gib / measured, 3)}))
    _ratios(results)


if __name__ == "__main__":
    main()
