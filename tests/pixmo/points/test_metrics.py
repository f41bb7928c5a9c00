"""Pointing and counting metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pixmo.points.metrics import (
    CountScore,
    PointingScore,
    answer_pointing_score,
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
    # (3, 3) px lies in A; (6, 4) px lies in neither
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
    ("seven,", None),  # the official parser strips trailing dots only
    ("A total of 4.  ", 4),
    ("Let me count.\nThere are a total of 4 dogs here", None),  # "a total of" on line 1 only
    ("a total of 3 dogs\nand some cats", 3),
    ("a total of 3²", 3),  # "3²".isdigit() holds but int() refuses it: not read as a word
    ("I see ²", None),
])
def test_parse_count(text, count):
    assert parse_count(text) == count


def test_parse_count_none_as_the_official_code_reads_it():
    # the official "none" pattern never matches (a backspace, not \b): the benchmarks read
    # "There are none." as no count at all
    assert parse_count("There are none.", none_is_zero=False) is None
    assert parse_count("None", none_is_zero=False) is None
    assert parse_count("There are a total of 0.", none_is_zero=False) == 0


# 10 x 10 px image: percent = 10 x pixels
TEN = {"width": 10, "height": 10}


def columns(*cols: int) -> np.ndarray:
    mask = np.zeros((10, 10), bool)
    mask[:, list(cols)] = True
    return mask


def test_point_on_a_mask_edge_rounds_to_the_nearest_pixel():
    gt, masks = [(20.0, 50.0)], [columns(0, 1, 2, 3, 4)]  # instance: pixel columns 0-4
    inside = pointing_score([(45.0, 50.0)], gt, **TEN, masks=masks)  # x 4.5 px -> 4 (even)
    assert inside == PointingScore(1.0, 1.0, 1.0)
    assert pointing_score([(45.1, 50.0)], gt, **TEN, masks=masks).f1 == 0.0  # 4.51 -> 5
    # the image's last column: 9.5 px rounds to 10, off the grid, so a miss
    last = [columns(9)]
    assert pointing_score([(95.0, 50.0)], [(95.0, 50.0)], **TEN, masks=last).f1 == 0.0
    assert pointing_score([(94.0, 50.0)], [(95.0, 50.0)], **TEN, masks=last).f1 == 1.0


def test_half_pixel_coordinates_round_as_the_official_arithmetic_does():
    # official: 80.3 / 100 * 500 = 401.49999999999994 -> pixel 401; computed as
    # 80.3 * 500 / 100 it would be exactly 401.5 -> 402 (half to even)
    column = np.zeros((10, 500), bool)
    column[:, 401] = True
    score = pointing_score([(80.3, 50.0)], [(80.2, 50.0)], width=500, height=10,
                           masks=[column])
    assert score == PointingScore(1.0, 1.0, 1.0)
    # 81.7% of 500 px: 408.50000000000006 -> 409, not 408
    column = np.zeros((10, 500), bool)
    column[:, 409] = True
    assert pointing_score([(81.7, 50.0)], [(81.8, 50.0)], width=500, height=10,
                          masks=[column]).f1 == 1.0


def test_two_points_in_one_instance_hit_it_once():
    score = pointing_score([(10.0, 50.0), (30.0, 50.0)], [(20.0, 50.0)], **TEN,
                           masks=[columns(0, 1, 2, 3, 4)])
    # 1 hit: precision 1/2, recall 1/1, F1 2 * 0.5 * 1 / 1.5
    assert (score.precision, score.recall) == (0.5, 1.0)
    assert score.f1 == pytest.approx(2 / 3)


def test_a_point_in_overlapping_masks_is_matched_to_maximise_hits():
    # A: columns 0-6, B: columns 5 and 9; p at 5 px lies in both, q at 6 px only in A.
    # Pairing by distance to the annotated points (A at 2 px, B at 9 px) would give p->A,
    # q->B (3 + 3 px < 4 + 4 px) and one hit; the maximum matching q->A, p->B gives two.
    masks = [columns(0, 1, 2, 3, 4, 5, 6), columns(5, 9)]
    score = pointing_score([(50.0, 50.0), (60.0, 50.0)], [(20.0, 50.0), (90.0, 50.0)], **TEN,
                           masks=masks)
    assert score == PointingScore(1.0, 1.0, 1.0)
    # one prediction in both: one hit of two instances
    one = pointing_score([(50.0, 50.0)], [(20.0, 50.0), (90.0, 50.0)], **TEN, masks=masks)
    assert (one.precision, one.recall) == (1.0, 0.5)
    assert one.f1 == pytest.approx(2 / 3)


def test_answers_scored_as_pixmo_points_eval():
    gt, masks = [(20.0, 50.0), (80.0, 50.0)], [columns(1, 2, 3), columns(7, 8, 9)]
    tag = points_to_text([(20.0, 50.0), (80.0, 50.0)], "cup")
    assert answer_pointing_score(tag, gt, masks, **TEN) == PointingScore(1.0, 1.0, 1.0)
    # right points inside a counting sentence: not a point answer, so 0
    counted = points_to_text([(20.0, 50.0), (80.0, 50.0)], "cup", count=True)
    assert answer_pointing_score(counted, gt, masks, **TEN) == PointingScore(0.0, 0.0, 0.0)
    for unparsable in ("There are none.", "", '<point x="20.0" y="50.0" alt="cup">cup',
                       '<point x="2O.0" y="50.0" alt="cup">cup</point>'):
        assert answer_pointing_score(unparsable, gt, masks, **TEN).f1 == 0.0
    # a coordinate above 100 is dropped from a well-formed tag: 1 of 2 predictions kept
    over = '<points x1="20.0" y1="50.0" x2="180.0" y2="50.0" alt="cup">cup</points>'
    assert answer_pointing_score(over, gt, masks, **TEN) == PointingScore(1.0, 0.5, 2 / 3)


def test_answers_for_an_empty_ground_truth():
    # nothing to point at: 1 when the answer holds no point, whatever it says, else 0
    for answer in ("There are none.", "I cannot see any.", ""):
        assert answer_pointing_score(answer, [], [], **TEN) == PointingScore(1.0, 1.0, 1.0)
    tag = points_to_text([(20.0, 50.0)], "cup")
    assert answer_pointing_score(tag, [], [], **TEN) == PointingScore(0.0, 0.0, 0.0)


def test_count_accuracy_exact_within_one_and_valid():
    score = count_accuracy([3, 5, None, 0], [3, 4, 2, 2])
    assert score == CountScore(exact=0.25, within_one=0.5, valid=0.75)
    with pytest.raises(ValueError, match="3 predictions for 2 ground-truth counts"):
        count_accuracy([1, 2, 3], [1, 2])
