"""Scoring pointing and counting answers, as the PixMo-Points and counting evaluations do.

Pointing: a pair of prediction and ground truth is a hit when the prediction lies within a
distance threshold of the ground-truth point (pairs chosen to maximise hits) or, when
instance masks are given (PixMo-Points-eval), inside that instance's mask. With masks the
hits are a maximum bipartite matching of predictions to the instances whose mask holds
them. Precision is hits per prediction, recall hits per instance. An image whose ground
truth is empty ("not present") scores 1 only when nothing is predicted.

Counting: a count is read from the answer text the way the official evaluator reads it
(``parse_count``) and scored exact and within one.

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

from pixmo.points.text import is_point_answer, parse_points

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
    # as allenai/molmo olmo/eval/evaluators.py is_point_in_region: round to the nearest pixel
    # (half to even), off the grid is a miss, then index [y, x]
    x, y = int(np.round(point[0])), int(np.round(point[1]))
    height, width = mask.shape
    return 0 <= x < width and 0 <= y < height and bool(mask[y, x])


def mask_hits(pred: np.ndarray, masks: Sequence[np.ndarray]) -> int:
    """The most (prediction, instance) pairs, each used once, with the prediction (pixels)
    inside the instance's mask: a maximum bipartite matching.

    The official PointingEval pairs predictions with ground-truth points by distance first
    and checks masks after; it measures that distance between pixel predictions and percent
    ground truth (PixMoPointsEval.get keeps the points in percent), so its pairs depend on
    the image size. Matching on the masks themselves scores what the protocol describes (a
    prediction hits an instance it lies in) and never fewer hits than any pairing gives.
    """
    from scipy.optimize import linear_sum_assignment

    if len(pred) == 0 or len(masks) == 0:
        return 0
    inside = np.array([[_in_mask(p, m) for m in masks] for p in pred], dtype=np.int64)
    rows, cols = linear_sum_assignment(inside, maximize=True)
    return int(inside[rows, cols].sum())


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
    order; then a prediction hits an instance by lying inside its mask (``mask_hits``).
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
        # as allenai/molmo olmo/util.py extract_points: divided by 100 before the
        # multiplication; the orders differ in the last place, which decides how a point on
        # half a pixel rounds (80.3% of 500 px: 401.49999999999994 -> 401, not 401.5 -> 402)
        hits = mask_hits(np.asarray(predicted, dtype=np.float64) / 100.0
                         * np.array([width, height], dtype=np.float64), masks)
    precision = hits / len(pred)
    recall = hits / len(gt)
    return PointingScore(precision, recall, f1_score(precision, recall))


def answer_pointing_score(answer: str, expected: Sequence[Point], masks: Sequence[np.ndarray],
                          *, width: int, height: int) -> PointingScore:
    """The PixMo-Points-eval score of one answer text: with instances, an answer that is not
    exactly one point tag scores 0 (official ``is_valid_format``); without, 1 only when it
    holds no point."""
    if expected and not is_point_answer(answer):
        return PointingScore(0.0, 0.0, 0.0)
    return pointing_score(parse_points(answer), expected, width=width, height=height,
                          masks=masks)


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
_TOTAL = re.compile(r".*a total of ([0-9]+)")
_NONE = re.compile(r".*\bnone\b")


def parse_count(text: str, *, none_is_zero: bool = True) -> int | None:
    """The count stated by an answer, or None when it states none we can read.

    The steps of allenai/molmo olmo/eval/evaluators.py PointCountEval, on the answer
    lower-cased with trailing dots removed: the last word as an integer or a number word up
    to twenty; else "a total of N" on the first line (the official pattern is matched from
    the start and ``.`` stops at a newline); else the word "none" on the first line as 0.
    The official "none" pattern is a plain (not raw) string, so its ``\\b`` is a backspace
    and it never matches: ``none_is_zero=False`` reproduces that, and the benchmarks use it.
    """
    answer = text.strip().lower().rstrip(".").strip()
    words = answer.split()
    if words:
        last = words[-1]
        try:
            return int(last)  # as the official code: "-2" and "٣" are read, "²" is not
        except ValueError:
            pass
        if last in _NUMBER_WORDS:
            return _NUMBER_WORDS[last]
    total = _TOTAL.match(answer)
    if total:
        return int(total.group(1))
    if none_is_zero and _NONE.match(answer):
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
