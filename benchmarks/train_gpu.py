"""Training throughput and MFU of a ~1.3B Molmo (``dense-1b``: 1.0B LLM + CLIP-L ViT) under
FSDP2 with bf16 parameters and fp32 gradient reduction, through the real training loop
(``torchrun -m molmo train``), against DDP with bf16 autocast (the baseline) in the same
invocation. Needs CUDA GPUs; prints one JSON line per strategy and the FSDP/DDP ratio.

    python benchmarks/train_gpu.py                    # every local GPU, 20 steps per strategy
    python benchmarks/train_gpu.py --gpus 1 --steps 15 --strategies fsdp

Data are real PixMo shards written here: 640x480 PNG images (6-7 crops each), long captions
from a generated lexicon and point sets; the tokenizer is a BPE trained on those captions, and
the LLM vocabulary is set to its size (a few thousand rows instead of 50,304, so the LM head
is a smaller share of the FLOPs than in the released 1B models). Per-device batch 4, sequences
up to 2304 tokens, activation checkpointing per block; the first ``--warmup`` steps are
excluded from the medians. MFU is per device against the dense bf16 peak (989 TFLOP/s on
H100/H200), with the FLOP model of ``molmo/train/metrics.py``.
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


def config(root: Path, strategy: str, shards: Path, tok: Path, vocab: int, gpus: int,
           steps: int) -> Path:
    cfg = {
        "run_dir": str(root / strategy), "steps": steps, "global_batch_size": 4 * gpus,
        "model": {"preset": "dense-1b", "tokenizer": str(tok),
                  "overrides": {"llm": {"vocab_size": vocab, "embedding_size": vocab}}},
        "data": {"datasets": [{"name": "bench", "source": str(shards),
                               "tasks": {"tasks": ["long_caption", "point_count"]}}],
                 "batch_size": 4, "num_workers": 4, "shuffle_block": 32,
                 "max_sequence_length": 2304},
        "preprocess": {"official_mask_quirk": False},
        "parallel": {"strategy": strategy, "precision": "bf16", "device": "cuda",
                     "activation_checkpointing": True},
        "checkpoint": {"interval": 0, "final": False, "export": False},
        "metrics": {"log_interval": 1, "tensorboard": False, "progress_bar": False},
    }
    path = root / f"{strategy}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run(path: Path, run_dir: Path, gpus: int, warmup: int) -> dict[str, float]:
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                    "--nproc_per_node", str(gpus), "-m", "molmo", "train", str(path)], check=True)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "loss" in r][warmup:]
    out = {key: statistics.median(r[key] for r in rows)
           for key in ("tokens_per_s", "samples_per_s", "step_time_s", "mfu")}
    out["tokens_per_step"] = statistics.median(r["tokens"] for r in rows)
    out["max_memory_gib"] = max(r["max_memory_gib"] for r in rows)
    out["final_loss"] = rows[-1]["loss"]
    return out


def main() -> None:
    import torch

    parser = argparse.ArgumentParser()
    parser.add_argument("--gpus", type=int, default=torch.cuda.device_count())
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--strategies", default="ddp,fsdp")
    args = parser.parse_args()
    if args.gpus < 1:
        sys.exit("train_gpu.py needs at least one CUDA GPU")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        shards, tok, vocab = prepare(root, args.samples)
        for strategy in args.strategies.split(","):
            path = config(root, strategy, shards, tok, vocab, args.gpus, args.steps)
            results[strategy] = run(path, root / strategy, args.gpus, args.warmup)
            print(json.dumps({"strategy": strategy, "gpus": args.gpus, "vocab": vocab,
                              "device": torch.cuda.get_device_name(0), **results[strategy]}))
    if {"ddp", "fsdp"} <= set(results):
        ratio = results["fsdp"]["tokens_per_s"] / results["ddp"]["tokens_per_s"]
        print(f"fsdp/ddp tokens/s ratio: {ratio:.3f}; fsdp MFU {results['fsdp']['mfu']:.1%}")


if __name__ == "__main__":
    main()
