"""Scoring pointing and counting answers, as the PixMo-Points and counting evaluations do.

Pointing: predicted points are paired one-to-one with ground-truth points by Hungarian
assignment; a pair is a hit when the prediction lies within a distance threshold of its
ground-truth point or, when instance masks are given (PixMo-Points-eval), inside the
mask of the instance it was paired with. Precision is hits per prediction, recall hits
per ground-truth point. An image whose ground truth is empty ("not present") scores 1
only when nothing is predicted.

Counting: a count is read from the answer text (last word as a number, else "a total of
N", else "none" as 0) and scored exact and within one.

Points are (x, y) in percent of the image width and height (0-100), as everywhere in
the toolkit; distances are measured in pixels of an image of the given size so that
thresholds mean the same thing horizontally and vertically.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Point = tuple[float, float]


def match_points(
    a: np.ndarray, b: np.ndarray, max_distance: float | None = None
) -> list[tuple[int, int]]:
    """Pair rows of ``a`` (N, 2) with rows of ``b`` (M, 2) one-to-one, minimising distance.

    With ``max_distance`` the assignment first maximises the number of pairs closer than
    that (an infeasible pair costs more than every feasible one together) and only such
    pairs are returned; without it every min(N, M) pair of the plain minimum-distance
    assignment is returned, which is what the official mask-based evaluation uses.
    """
    from scipy.optimize import linear_sum_assignment

    if len(a) == 0 or len(b) == 0:
        return []
    dist = np.linalg.norm(a[:, None, :] - b[None, :, :], axis=-1)
    if max_distance is None:
        rows, cols = linear_sum_assignment(dist)
        return [(int(i), int(j)) for i, j in zip(rows, cols, strict=True)]
    feasible = dist <= max_distance
    penalty = float(dist[feasible].sum()) + 1.0 if feasible.any() else 1.0
    rows, cols = linear_sum_assignment(np.where(feasible, dist, penalty + dist))
    return [(int(i), int(j)) for i, j in zip(rows, cols, strict=True) if feasible[i, j]]


def to_pixels(points: Sequence[Point], width: float, height: float) -> np.ndarray:
    """Percent (x, y) to pixel (x, y) of an image of ``width`` x ``height``."""
    arr = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return arr * np.array([width, height], dtype=np.float64) / 100.0


@dataclass(frozen=True)
class PointingScore:
    """Precision, recall and F1 of one image's predicted points (or a mean over images)."""

    precision: float
    recall: float
    f1: float


def f1_score(precision: float, recall: float) -> float:
    if precision == 0 or recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def _in_mask(point: np.ndarray, mask: np.ndarray) -> bool:
    # the official check: round to the nearest pixel (half to even), then index [y, x]
    x, y = int(np.round(point[0])), int(np.round(point[1]))
    height, width = mask.shape
    return 0 <= x < width and 0 <= y < height and bool(mask[y, x])


def pointing_score(
    predicted: Sequence[Point],
    expected: Sequence[Point],
    *,
    width: int,
    height: int,
    threshold: float = 5.0,
    masks: Sequence[np.ndarray] | None = None,
) -> PointingScore:
    """Score one image's predicted points against its ground truth.

    ``threshold`` is in percent of the image diagonal and used when ``masks`` is None.
    ``masks`` holds one boolean (height, width) array per ground-truth point, in the same
    order; then predictions are paired with ground-truth points by distance and a pair is a
    hit when the prediction falls inside that point's mask.
    """
    if not expected:
        value = 1.0 if not predicted else 0.0
        return PointingScore(value, value, value)
    if not predicted:
        return PointingScore(0.0, 0.0, 0.0)
    pred = to_pixels(predicted, width, height)
    gt = to_pixels(expected, width, height)
    if masks is None:
        max_distance = threshold / 100.0 * math.hypot(width, height)
        hits = len(match_points(pred, gt, max_distance))
    else:
        if len(masks) != len(gt):
            raise ValueError(f"got {len(masks)} masks for {len(gt)} ground-truth points")
        for mask in masks:
            if mask.shape != (height, width):
                raise ValueError(f"mask shape {mask.shape} != image (height, width) "
                                 f"{(height, width)}")
        hits = sum(_in_mask(pred[i], masks[j]) for i, j in match_points(pred, gt))
    precision = hits / len(pred)
    recall = hits / len(gt)
    return PointingScore(precision, recall, f1_score(precision, recall))


def mean_pointing(scores: Sequence[PointingScore]) -> PointingScore:
    """Average per-image scores, as the official evaluation reports them."""
    if not scores:
        raise ValueError("no pointing scores to average")
    n = len(scores)
    return PointingScore(
        sum(s.precision for s in scores) / n,
        sum(s.recall for s in scores) / n,
        sum(s.f1 for s in scores) / n,
    )


_NUMBER_WORDS = {
    word: value
    for value, word in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen "
        "fourteen fifteen sixteen seventeen eighteen nineteen twenty".split()
    )
}
_TOTAL = re.compile(r"a total of (\d+)", re.IGNORECASE)


def parse_count(text: str) -> int | None:
    """The count stated by an answer, or None when it states none we can read.

    Tried in order: the last word as digits or a number word ("... a total of 7."), the
    phrase "a total of N" anywhere, and the word "none" ("There are none.") as 0.
    """
    words = text.strip().split()
    if words:
        last = words[-1].strip(".,;:!?\"'").lower()
        if last.isdigit():
            return int(last)
        if last in _NUMBER_WORDS:
            return _NUMBER_WORDS[last]
    total = _TOTAL.search(text)
    if total:
        return int(total.group(1))
    if re.search(r"\bnone\b", text, re.IGNORECASE):
        return 0
    return None


@dataclass(frozen=True)
class CountScore:
    """Share of answers with the exact count, within one of it, and with a readable count."""

    exact: float
    within_one: float
    valid: float


def count_accuracy(predicted: Sequence[int | None], expected: Sequence[int]) -> CountScore:
    """Score predicted counts (None = unreadable answer, always wrong) against the truth."""
    if len(predicted) != len(expected):
        raise ValueError(f"{len(predicted)} predictions for {len(expected)} ground-truth counts")
    if not expected:
        raise ValueError("no counts to score")
    n = len(expected)
    exact = sum(p is not None and p == e for p, e in zip(predicted, expected, strict=True))
    close = sum(p is not None and abs(p - e) <= 1 for p, e in zip(predicted, expected, strict=True))
    valid = sum(p is not None for p in predicted)
    return CountScore(exact / n, close / n, valid / n)
