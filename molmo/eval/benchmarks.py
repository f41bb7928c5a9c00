"""The published benchmarks: PixMo-Count, CountBenchQA and PixMo-Points-eval questions,
per-answer scores and summaries, as the Molmo paper's evaluation defines them.

Questions come from datasets that ``pixmo import`` wrote: pixmo-count (a split: every point
set is "how many {label}", its count the truth), countbenchqa (every question with its
count) and pixmo-points-eval (every point set with its instance masks). Prompts are fixed,
so every model is asked the same: the official evaluation draws a template at random per
example (allenai/molmo olmo/data/data_formatter.py, GENERAL_PROMPTS_V1 "point_count" and
"pointing"); we always ask its first template of each style. CountBenchQA asks its own
question. Counting is scored with ``parse_count`` as the official PointCountEval reads
answers ("none" unread, as there); pointing with ``answer_pointing_score``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pixmo.dataset.format import ShardSample
from pixmo.dataset.reader import iter_samples
from pixmo.errors import PixmoError
from pixmo.points.masks import decode_mask
from pixmo.points.metrics import (
    PointingScore,
    answer_pointing_score,
    count_accuracy,
    mean_pointing,
    parse_count,
)
from pixmo.points.text import parse_points

COUNT_PROMPT = "How many {label} are there?"
POINT_PROMPT = "Point to {label}\nPlease say 'This isn't in the image.' if it is not in the image."
BENCHMARKS: dict[str, str] = {  # benchmark -> the ``pixmo import`` subset it reads
    "pixmo-count": "pixmo-count",
    "countbench": "countbenchqa",
    "pixmo-points-eval": "pixmo-points-eval",
}
POINTING = "pixmo-points-eval"
# The official budget for pointing and CountBenchQA (launch_scripts/utils.py get_evaluation).
# PixMo-Count gets it too: there the public script matches the dataset's old name
# (fast_flickr_count_qa), so pixmo_count_counting falls to its default of 12 tokens, which
# cuts a point-then-count answer before its count.
MAX_NEW_TOKENS = 192


@dataclass(frozen=True)
class Question:
    """One benchmark question: its key (sample key and index), prompt and truth."""

    key: str
    prompt: str
    sample: ShardSample = field(repr=False)
    truth: dict[str, Any]


def _count_questions(sample: ShardSample) -> list[Question]:
    return [Question(f"{sample.key}-{i}", COUNT_PROMPT.format(label=p["label"].lower()), sample,
                     {"label": p["label"], "count": int(p["count"])})
            for i, p in enumerate(sample.json["points"])]


def _countbench_questions(sample: ShardSample) -> list[Question]:
    return [Question(f"{sample.key}-{i}", qa["question"], sample, {"count": int(qa["answer"])})
            for i, qa in enumerate(sample.json["qa"]) if qa.get("source") == "countbenchqa"]


def _point_questions(sample: ShardSample) -> list[Question]:
    image = sample.json["image"]
    return [Question(f"{sample.key}-{i}", POINT_PROMPT.format(label=p["label"].lower()), sample,
                     {"label": p["label"], "points": p["points"], "masks": p["masks"],
                      "width": image["width"], "height": image["height"]})
            for i, p in enumerate(sample.json["points"]) if "masks" in p]


_QUESTIONS = {"pixmo-count": _count_questions, "countbench": _countbench_questions,
              POINTING: _point_questions}


def check_benchmark(name: str) -> str:
    if name not in BENCHMARKS:
        raise PixmoError(f"unknown benchmark {name!r}; expected one of {sorted(BENCHMARKS)}",
                         field="--benchmark")
    return name


def questions(benchmark: str, dataset: str, limit: int | None = None) -> list[Question]:
    """The benchmark's questions in dataset order (the first ``limit``, when given)."""
    make = _QUESTIONS[check_benchmark(benchmark)]
    out: list[Question] = []
    for sample in iter_samples(dataset):
        try:
            out.extend(make(sample))
        except (KeyError, TypeError, ValueError) as exc:  # a sample not as the import writes
            raise PixmoError(f"sample {sample.key} has no {benchmark} question as `pixmo "
                             f"import` writes it ({exc!r:.80})", file=dataset) from exc
        if limit is not None and len(out) >= limit:
            return out[:limit]
    if not out:
        raise PixmoError(f"no {benchmark} questions here; make the dataset with "
                         f"`pixmo import {BENCHMARKS[benchmark]}`", file=dataset)
    return out


def score(benchmark: str, question: Question, answer: str) -> dict[str, Any]:
    """One JSON line: the question, the answer and how it scores."""
    head = {"key": question.key, "prompt": question.prompt, "answer": answer}
    truth = question.truth
    if benchmark != POINTING:
        predicted = parse_count(answer, none_is_zero=False)
        return {**head, "true_count": truth["count"], "predicted_count": predicted,
                "correct": predicted == truth["count"]}
    masks = [decode_mask(m) for m in truth["masks"]]
    expected = [(float(x), float(y)) for x, y in truth["points"]]
    result = answer_pointing_score(answer, expected, masks, width=truth["width"],
                                   height=truth["height"])
    return {**head, "true_points": truth["points"],
            "predicted_points": [list(p) for p in parse_points(answer)],
            "precision": result.precision, "recall": result.recall, "f1": result.f1}


def summarize(benchmark: str, records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Means over the per-example records (the official evaluators average per example)."""
    n = len(records)
    out: dict[str, Any] = {"benchmark": benchmark, "examples": n}
    if benchmark == POINTING:
        mean = mean_pointing([PointingScore(r["precision"], r["recall"], r["f1"])
                              for r in records])
        return {**out, "precision": mean.precision, "recall": mean.recall, "f1": mean.f1}
    truth = [r["true_count"] for r in records]
    counts = count_accuracy([r["predicted_count"] for r in records], truth)
    out.update(accuracy=counts.exact, within_one=counts.within_one, valid=counts.valid)
    per_count = Counter(truth)
    right = Counter(r["true_count"] for r in records if r["correct"])
    out["accuracy_by_count"] = {str(c): right[c] / per_count[c] for c in sorted(per_count)}
    return out


def table(summary: dict[str, Any]) -> str:
    """The summary as a small text table, metrics in percent."""
    rows = [("benchmark", summary["benchmark"]), ("examples", str(summary["examples"]))]
    for metric in ("accuracy", "within_one", "valid", "precision", "recall", "f1"):
        if metric in summary:
            rows.append((metric, f"{100 * summary[metric]:.1f}"))
    for count, value in summary.get("accuracy_by_count", {}).items():
        rows.append((f"accuracy (count {count})", f"{100 * value:.1f}"))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)
