"""Held-out evaluation of a Molmo: pointing, counting and caption loss on held-out shards.

Pointing and counting are scored by greedy generation, captions by teacher forcing. Runs inside
training (every rank the same work, so a sharded model stays in step; rank 0 writes) and as
``molmo eval`` on an exported model.

Every point set of a held-out sample becomes one point-then-count question (the prompts of
``pixmo/points/prompts.py``, drawn with a seeded RNG so every evaluation asks the same). The
answer's points are scored with ``pointing_score`` and its count with ``count_accuracy``; the
majority baseline always answers the most frequent true count of the evaluation set.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from molmo.data.tasks import CAPTION_TEMPLATES, load_image
from molmo.generate import GenerationConfig, collate_prompts, generate
from molmo.model.molmo import Molmo, token_loss
from molmo.preprocess.batching import collate
from molmo.preprocess.chat import Conversation
from molmo.preprocess.config import PreprocessConfig
from molmo.preprocess.processor import MolmoProcessor
from molmo.preprocess.tokenizer import MolmoTokenizer
from molmo.train.config import EvalConfig
from pixmo.atomic import atomic_write_bytes
from pixmo.dataset.format import ShardSample
from pixmo.dataset.reader import iter_samples
from pixmo.errors import PixmoError
from pixmo.points.metrics import count_accuracy, mean_pointing, parse_count, pointing_score
from pixmo.points.prompts import point_prompt
from pixmo.points.text import parse_points


@dataclass(frozen=True)
class PointQuestion:
    """One held-out point set asked as "point to the {label}"; the truth scores the answer."""

    key: str
    label: str
    prompt: str
    image: Any  # PIL image, loaded once for all the point sets of its sample
    true_points: list[tuple[float, float]]  # (x, y) in percent of width and height
    true_count: int


def point_questions(source: str, cfg: EvalConfig) -> list[PointQuestion]:
    """Up to ``max_examples`` point-then-count questions from held-out shards."""
    rng = random.Random(cfg.seed)
    out: list[PointQuestion] = []
    for sample in iter_samples(source):
        image = None
        for point_set in sample.json["points"]:
            if len(out) == cfg.max_examples:
                return out
            image = image or load_image(sample)
            out.append(PointQuestion(
                sample.key, point_set["label"],
                point_prompt(point_set["label"], count=True, rng=rng), image,
                [(float(x), float(y)) for x, y in point_set["points"]],
                int(point_set["count"])))
    return out


def _captions(source: str, cfg: EvalConfig) -> list[tuple[ShardSample, str]]:
    out = []
    for sample in iter_samples(source):
        if sample.json["captions"] and len(out) < cfg.max_examples:
            out.append((sample, sample.json["captions"][0]["text"]))
    return out


def _device(model: Molmo) -> torch.device:
    return model.llm.lm_head.weight.device


@torch.no_grad()
def pointing_eval(model: Molmo, tokenizer: MolmoTokenizer, processor: MolmoProcessor,
                  cfg: EvalConfig) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Metrics and one prediction record per question."""
    assert cfg.pointing is not None
    questions = point_questions(cfg.pointing, cfg)
    if not questions:
        raise PixmoError("no point sets in the held-out shards", file=cfg.pointing,
                         field="eval.pointing")
    gen = GenerationConfig(max_new_tokens=cfg.max_new_tokens,
                           stop_token_ids=(tokenizer.eos_id,))
    records, scores = [], []
    for start in range(0, len(questions), cfg.batch_size):
        chunk = questions[start:start + cfg.batch_size]
        batch = collate_prompts([processor(q.image, q.prompt) for q in chunk])
        out = generate(model, batch["input_ids"], batch["images"], batch["image_masks"],
                       batch["image_input_idx"], gen, decode=tokenizer.decode)
        for q, tokens in zip(chunk, out.tokens, strict=True):
            text = tokenizer.decode(tokens).strip()
            points = parse_points(text)
            width, height = q.image.size
            score = pointing_score(points, q.true_points, width=width, height=height,
                                   threshold=cfg.threshold)
            scores.append(score)
            records.append({"key": q.key, "label": q.label, "prompt": q.prompt,
                            "answer": text, "predicted_points": [list(p) for p in points],
                            "true_points": [list(p) for p in q.true_points],
                            "predicted_count": parse_count(text), "true_count": q.true_count,
                            "width": width, "height": height, "f1": score.f1})
    truth = [r["true_count"] for r in records]
    counts = count_accuracy([r["predicted_count"] for r in records], truth)
    majority, hits = Counter(truth).most_common(1)[0]
    mean = mean_pointing(scores)
    return {"num_eval_examples": len(records), "counting_accuracy": counts.exact,
            "count_within_one": counts.within_one, "count_readable": counts.valid,
            "majority_count": majority, "majority_baseline_accuracy": hits / len(truth),
            "pointing_f1": mean.f1, "pointing_precision": mean.precision,
            "pointing_recall": mean.recall}, records


@torch.no_grad()
def caption_loss(model: Molmo, processor: MolmoProcessor, cfg: EvalConfig) -> dict[str, Any]:
    """Mean token cross-entropy of held-out captions (first caption, first template)."""
    assert cfg.captions is not None
    items = _captions(cfg.captions, cfg)
    if not items:
        raise PixmoError("no captions in the held-out shards", file=cfg.captions,
                         field="eval.captions")
    total, count = 0.0, 0
    for start in range(0, len(items), cfg.batch_size):
        examples = [processor(load_image(s), [Conversation((CAPTION_TEMPLATES[0], text))])
                    for s, text in items[start:start + cfg.batch_size]]
        batch = {k: v.to(_device(model)) for k, v in collate(examples).items()}
        logits = model(batch["input_ids"], batch["images"], batch["image_masks"],
                       batch["image_input_idx"], position_ids=batch["position_ids"],
                       subsegment_ids=batch["subsegment_ids"])
        loss, n = token_loss(logits, batch["labels"])
        total, count = total + float(loss), count + int(n)
    return {"caption_loss": total / max(count, 1), "num_caption_examples": len(items)}


def evaluate(model: Molmo, tokenizer: MolmoTokenizer, preprocess: PreprocessConfig,
             cfg: EvalConfig, *, out_dir: Path | None = None) -> dict[str, Any]:
    """Run the configured evaluations; with ``out_dir``, write ``eval.json`` and
    ``predictions.jsonl`` there. Returns the metrics."""
    if cfg.pointing is None and cfg.captions is None:
        raise PixmoError("nothing to evaluate: set eval.pointing and/or eval.captions",
                         field="eval")
    processor = MolmoProcessor(tokenizer, preprocess)
    was_training = model.training
    model.eval()
    try:
        results: dict[str, Any] = {}
        records: list[dict[str, Any]] = []
        if cfg.pointing is not None:
            metrics, records = pointing_eval(model, tokenizer, processor, cfg)
            results.update(metrics)
        if cfg.captions is not None:
            results.update(caption_loss(model, processor, cfg))
    finally:
        model.train(was_training)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        _write(out_dir / "eval.json", json.dumps(results, indent=2) + "\n")
        _write(out_dir / "predictions.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    return results


def evaluate_run(config_path: str, *, checkpoint: str | None = None,
                 out_dir: str | None = None, device: str = "cpu") -> dict[str, Any]:
    """``molmo eval``: evaluate an exported model (default ``run_dir/model``) with the
    training config's eval and preprocessing sections; writes to ``out_dir`` (default
    ``run_dir/eval/final``)."""
    from molmo.model.weights import from_pretrained
    from molmo.train.config import TrainConfig

    cfg = TrainConfig.from_yaml(config_path)
    path = Path(checkpoint) if checkpoint else Path(cfg.run_dir) / "model"
    if not (path / "config.json").is_file():
        raise PixmoError("no exported model here (train first, or pass --checkpoint)",
                         file=str(path))
    model = from_pretrained(path, device=device, dtype=torch.float32)
    tokenizer = MolmoTokenizer.from_dir(path if (path / "tokenizer.json").is_file()
                                        else cfg.model.tokenizer or path,
                                        vocab_size=model.cfg.llm.vocab_size)
    preprocess = dataclasses.replace(cfg.preprocess,
                                     max_crops=cfg.data.max_crops or cfg.preprocess.max_crops)
    out = Path(out_dir) if out_dir else Path(cfg.run_dir) / "eval" / "final"
    return evaluate(model, tokenizer, preprocess, cfg.eval, out_dir=out)


def _write(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
