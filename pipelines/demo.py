"""``make demo``: the whole mission on a laptop, with real parts and no downloads.

synthetic raw annotations (scenes, eSpeak NG speech, click logs, bad records)
-> ``pixmo build`` (Beam, or Ray with ``--engine ray``; Whisper tiny.en)
-> a byte-level BPE tokenizer trained on what was built
-> ``molmo train`` under torchrun on 2 CPU processes
-> ``molmo eval`` on held-out scenes -> ``pixmo report``.

Everything lands in ``--out`` (default ``demo-output/``); ``eval.json`` there
holds the numbers. Each step is the same command a user would run.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from molmo.cli import main as molmo_main
from molmo.preprocess.tokenizer import train_bpe_tokenizer
from pipelines.cli import main as pixmo_main
from pixmo.dataset.reader import iter_samples
from pixmo.points.prompts import point_prompt
from pixmo.points.text import points_to_text
from pixmo.synth.config import SynthConfig
from pixmo.synth.raw import synthesize
from pixmo.synth.scenes import SceneConfig

TOKENIZER_VOCAB = 512  # the demo preset's vocabulary; image tokens follow at 512..516
MIN_SPEECH_S = "5"  # the synthetic descriptions last 10-18 s; PixMo asked for 60-90 s


def train_config(out: Path, steps: int) -> dict[str, Any]:
    """The demo's training run: the demo preset from scratch on the built shards."""
    return {
        "run_dir": str(out / "run"),
        "steps": steps,
        "global_batch_size": 8,
        "seed": 1,
        "model": {"preset": "demo", "tokenizer": str(out / "data/tokenizer"),
                  "overrides": {"llm": {"vocab_size": TOKENIZER_VOCAB,
                                        "embedding_size": TOKENIZER_VOCAB}}},
        "data": {"datasets": [{"name": "pixmo", "source": str(out / "data/pixmo"),
                               "tasks": {"tasks": ["point_count", "pointing"],
                                         "point_count_prob": 0.8}}],
                 "batch_size": 4, "num_workers": 1, "mode": "resampled",
                 "max_sequence_length": 384, "max_crops": 1, "seed": 2},
        "preprocess": {"crop_size": 112, "overlap_margins": [2, 2],
                       "official_mask_quirk": False,
                       "conversation_weighting": "root_subsegments"},
        # The image path learns 20x slower than the LLM. At one rate the first steps, while
        # the LLM learns the answer format, drive the patch embedding towards zero and the
        # image tokens become a content-free attention sink (measured: patch_embed norm
        # shrank 20x, losses with true and shuffled images equal to 4 digits).
        "optim": {"connector": {"lr": 1.0e-4, "warmup_steps": 20},
                  "vit": {"lr": 1.0e-4, "warmup_steps": 20},
                  "llm": {"lr": 2.0e-3, "warmup_steps": 20}, "z_loss": 1.0e-4},
        "parallel": {"strategy": "ddp", "precision": "fp32", "device": "cpu"},
        "checkpoint": {"interval": max(steps // 2, 1), "keep": 1, "export": True},
        "metrics": {"log_interval": 5},
        "eval": {"interval": 10 * steps, "pointing": str(out / "data/pixmo-heldout"),
                 "captions": str(out / "data/pixmo-heldout"), "max_examples": 64,
                 "max_new_tokens": 160},
    }


def tokenizer_texts(dataset: Path, seed: int = 0) -> list[str]:
    """What the model will read and write: captions, transcripts, prompts, point answers."""
    rng = random.Random(seed)
    texts = []
    for sample in iter_samples(dataset):
        texts += [c["text"] for c in sample.json["captions"]]
        texts += [t["text"] for t in sample.json["transcripts"]]
        for point_set in sample.json["points"]:
            points = [tuple(p) for p in point_set["points"]]
            texts.append(points_to_text(points, point_set["label"], count=True))
            texts.append(point_prompt(point_set["label"], count=True, rng=rng))
            texts.append(point_prompt(point_set["label"], count=False, rng=rng))
    return texts


def synth(out: Path, scenes: int, first_index: int, heldout: bool,
          speech_share: float) -> int:
    """Scenes a model trained from scratch for minutes can learn to count: 1-7 copies of
    one shape (3 colours x 3 shapes) on a plain background, so the answer to "how many" is
    spread and a model must look to get it right. Only ``speech_share`` of the images are
    described aloud (speech costs seconds an image, clicks nothing), so the model sees many
    images in a few minutes. Training clicks keep the simulated annotators' misses and
    duplicates, and the bad records; held-out clicks miss nothing, so the truth is exact."""
    scene = SceneConfig(min_objects=0, max_objects=0, counting_share=1.0, min_count=1,
                        max_count=7, count_radius=0.08, colours=("red", "blue", "black"),
                        shapes=("circle", "square", "triangle"), backgrounds=("plain",))
    extra = {"miss_rate": 0.0, "bad_records": False} if heldout else {}
    report = synthesize(out, scenes=scenes, seed=0, config=SynthConfig(
        scene=scene, first_index=first_index, speech_share=speech_share,
        absent_label_share=0.0, **extra))
    print(f"{report.images} images, {report.caption_sessions} spoken descriptions "
          f"({report.audio_seconds:.0f} s), {report.point_annotations} pointing annotations, "
          f"{report.bad_records} deliberately bad records in {out}")
    return 0


def step(title: str, fn: Callable[[], int], timings: dict[str, float]) -> None:
    print(f"\n== {title}", flush=True)
    start = time.perf_counter()
    if fn() != 0:
        raise SystemExit(f"demo: {title} failed")
    timings[title] = time.perf_counter() - start


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.demo")
    parser.add_argument("--out", default="demo-output")
    parser.add_argument("--scenes", type=int, default=1500)
    parser.add_argument("--speech-share", type=float, default=0.04,
                        help="share of training images described aloud")
    parser.add_argument("--heldout-scenes", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--engine", default="beam", choices=("beam", "ray"))
    args = parser.parse_args(argv)
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    timings: dict[str, float] = {}
    raw, heldout = out / "raw", out / "raw-heldout"
    step("synthesise raw annotations",
         lambda: synth(raw, args.scenes, 0, False, args.speech_share), timings)
    step("synthesise held-out scenes",
         lambda: synth(heldout, args.heldout_scenes, args.scenes, True, 0.25), timings)
    for src, dst in ((raw, "pixmo"), (heldout, "pixmo-heldout")):
        step(f"build {dst} ({args.engine})", lambda src=src, dst=dst: pixmo_main(
            ["build", "--raw", str(src), "--out", str(out / "data" / dst), "--engine",
             args.engine, "--min-speech-s", MIN_SPEECH_S, "--shard-samples", "128",
             "--caption-method", "cleanup"]), timings)  # offline; or --caption-llm URL|hf:DIR
    step("validate", lambda: pixmo_main(["validate", str(out / "data/pixmo")]), timings)

    def tokenizer() -> int:
        tok = train_bpe_tokenizer(tokenizer_texts(out / "data/pixmo"), out / "data/tokenizer",
                                  vocab_size=TOKENIZER_VOCAB)
        print(f"trained a byte-level BPE tokenizer ({tok.vocab_size} tokens)")
        return 0

    step("tokenizer", tokenizer, timings)
    config = out / "train.yaml"
    config.write_text(yaml.safe_dump(train_config(out, args.steps), sort_keys=False))
    step("train (torchrun, 2 CPU processes)", lambda: subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
         "2", "-m", "molmo", "train", str(config)]).returncode, timings)
    step("evaluate on held-out scenes", lambda: molmo_main(
        ["eval", str(config), "--out", str(out / "run/eval")]), timings)
    shutil.copy(out / "run/eval/eval.json", out / "eval.json")
    step("report", lambda: pixmo_main(
        ["report", str(out / "data/pixmo"), "--out", str(out / "report.html"), "--run",
         str(out / "run"), "--eval-data", str(out / "data/pixmo-heldout")]), timings)

    result = json.loads((out / "eval.json").read_text())
    print("\n== done")
    for title, seconds in timings.items():
        print(f"  {seconds:7.1f} s  {title}")
    print(f"\ncounting accuracy {result['counting_accuracy']:.3f} (majority-answer baseline "
          f"{result['majority_baseline_accuracy']:.3f}), pointing F1 "
          f"{result['pointing_f1']:.3f}, on {result['num_eval_examples']} held-out questions")
    print(f"Look at {out / 'report.html'} (the dataset, the loss curve, predictions), "
          f"{out / 'eval.json'}, and the shards in {out / 'data/pixmo'}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
