"""Pointing and counting metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pixmo.points.metrics import (
    CountScore,
    PointingScore,
    count_accuracy,
    match_points,
    mean_pointing,
    parse_count,
    pointing_score,
)
from pixmo.points.text import points_to_text

# on a 100x100 image, percent == pixels and the diagonal is 141.42 px
SQUARE = {"width": 100, "height": 100}
FIVE_PX = 100 * 5 / math.hypot(100, 100)  # a threshold of 5 px, in percent of the diagonal


def test_threshold_hits_with_unmatched_predictions():
    gt = [(10.0, 10.0), (50.0, 50.0)]
    pred = [(11.0, 10.0), (50.0, 53.0), (80.0, 80.0), (20.0, 80.0)]
    score = pointing_score(pred, gt, **SQUARE, threshold=FIVE_PX)
    # 2 hits (1 px and 3 px away); 2 predictions unmatched
    assert score.precision == 0.5 and score.recall == 1.0
    assert score.f1 == pytest.approx(2 * 0.5 * 1.0 / 1.5)


def test_threshold_misses_beyond_the_distance():
    gt = [(10.0, 10.0), (50.0, 50.0), (90.0, 90.0)]
    pred = [(10.0, 16.0)]  # 6 px from its nearest ground truth
    assert pointing_score(pred, gt, **SQUARE, threshold=FIVE_PX) == PointingScore(0, 0, 0)
    score = pointing_score(pred, gt, **SQUARE, threshold=2 * FIVE_PX)
    assert (score.precision, score.recall) == (1.0, pytest.approx(1 / 3))
    assert score.f1 == pytest.approx(0.5)


def test_threshold_matching_maximises_hits_not_total_distance():
    # pairing p=(10,10)->A=(10,10) and q=(10,5)->B=(14,13) has the smaller total distance
    # (0 + 8.94) but only one pair within 5 px; p->B (5) and q->A (5) gives two hits
    gt = [(10.0, 10.0), (14.0, 13.0)]
    pred = [(10.0, 10.0), (10.0, 5.0)]
    assert pointing_score(pred, gt, **SQUARE, threshold=FIVE_PX) == PointingScore(1, 1, 1)
    assert sorted(match_points(np.array(pred), np.array(gt))) == [(0, 0), (1, 1)]
    assert sorted(match_points(np.array(pred), np.array(gt), 5.0)) == [(0, 1), (1, 0)]


def test_threshold_is_relative_to_the_diagonal_of_non_square_images():
    # 400x100 image: 5% of the diagonal (412.3 px) is 20.6 px = 5.15% of the width
    pred, gt = [(15.0, 50.0)], [(10.0, 50.0)]
    assert pointing_score(pred, gt, width=400, height=100).f1 == 1.0
    assert pointing_score([(15.5, 50.0)], gt, width=400, height=100).f1 == 0.0


def test_masks_decide_hits_as_in_pixmo_points_eval():
    masks = [np.zeros((10, 10), bool), np.zeros((10, 10), bool)]
    masks[0][0:5, 0:5] = True  # instance A: top-left quarter
    masks[1][5:10, 5:10] = True  # instance B: bottom-right quarter
    gt = [(25.0, 25.0), (75.0, 75.0)]
    # (3, 3) px lies in A; (6, 4) px is paired with B by distance but lies outside B
    score = pointing_score([(30.0, 30.0), (60.0, 40.0)], gt, width=10, height=10, masks=masks)
    assert score == PointingScore(0.5, 0.5, 0.5)
    # pixel 4.5 rounds half to even -> 4, inside A; 5.5 -> 6, inside B
    score = pointing_score([(45.0, 20.0), (55.0, 55.0)], gt, width=10, height=10, masks=masks)
    assert score == PointingScore(1.0, 1.0, 1.0)
    # a prediction off the mask grid is a miss, not an error
    off = pointing_score([(100.0, 100.0)], gt[1:], width=10, height=10, masks=masks[1:])
    assert off == PointingScore(0.0, 0.0, 0.0)


def test_mask_arguments_are_checked():
    with pytest.raises(ValueError, match="got 1 masks for 2 ground-truth points"):
        pointing_score([(1.0, 1.0)], [(1.0, 1.0), (2.0, 2.0)], width=4, height=4,
                       masks=[np.zeros((4, 4), bool)])
    with pytest.raises(ValueError, match=r"mask shape \(3, 4\) != image \(height, width\) "
                                         r"\(4, 4\)"):
        pointing_score([(1.0, 1.0)], [(1.0, 1.0)], width=4, height=4,
                       masks=[np.zeros((3, 4), bool)])


def test_empty_ground_truth_scores_one_only_without_predictions():
    assert pointing_score([], [], **SQUARE) == PointingScore(1.0, 1.0, 1.0)
    assert pointing_score([(5.0, 5.0)], [], **SQUARE) == PointingScore(0.0, 0.0, 0.0)
    assert pointing_score([], [(5.0, 5.0)], **SQUARE) == PointingScore(0.0, 0.0, 0.0)


def test_mean_pointing_averages_per_image():
    mean = mean_pointing([PointingScore(1, 1, 1), PointingScore(0.5, 1.0, 2 / 3),
                          PointingScore(0, 0, 0)])
    assert mean.precision == 0.5 and mean.recall == pytest.approx(2 / 3)
    assert mean.f1 == pytest.approx(5 / 9)
    with pytest.raises(ValueError, match="no pointing scores"):
        mean_pointing([])


@pytest.mark.parametrize("text,count", [
    (points_to_text([(1.0, 2.0), (3.0, 4.0), (5.0, 6.0)], "cat", count=True), 3),
    ("There are none.", 0),
    ("I count three.", 3),
    ("Twelve", 12),
    ("12.", 12),
    ("There are a total of 5 cats in the picture", 5),
    ("I cannot tell.", None),
    ("", None),
])
def test_parse_count(text, count):
    assert parse_count(text) == count


def test_count_accuracy_exact_within_one_and_valid():
    score = count_accuracy([3, 5, None, 0], [3, 4, 2, 2])
    assert score == CountScore(exact=0.25, within_one=0.5, valid=0.75)
    with pytest.raises(ValueError, match="3 predictions for 2 ground-truth counts"):
        count_accuracy([1, 2, 3], [1, 2])
