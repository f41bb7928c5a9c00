"""Molmo's point text: golden strings, parsing, the official order and rounding, and the
public names ``pixmo.points.points_to_text`` / ``pixmo.points.parse_points``."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linear_sum_assignment

import pixmo.points
from pixmo.errors import PixmoError
from pixmo.points import text as point_text
from pixmo.points.text import official_order, parse_points, points_to_text


def test_public_api_is_the_point_text_module():
    from pixmo.points import parse_points as public_parse
    from pixmo.points import points_to_text as public_format

    assert public_format is point_text.points_to_text is points_to_text
    assert public_parse is point_text.parse_points is parse_points
    assert pixmo.points.__all__ == ["parse_points", "points_to_text"]


# ---------------------------------------------------------------- Molmo text: golden strings


def test_golden_one_point():
    assert points_to_text([(12.34, 45.66)], "Red Circle") == (
        '<point x="12.3" y="45.7" alt="red circle">red circle</point>')


def test_golden_several_points_sorted_by_x_then_y():
    text = points_to_text([(70.0, 5.0), (10.04, 50.0), (9.96, 20.0), (33.333, 66.666)], "dog")
    # 10.04 and 9.96 both round to x=10.0, so y decides; numbering follows that order
    assert text == ('<points x1="10.0" y1="20.0" x2="10.0" y2="50.0" x3="33.3" y3="66.7" '
                    'x4="70.0" y4="5.0" alt="dog">dog</points>')


def test_golden_none_and_counting():
    assert points_to_text([], "cat") == "There are none."
    assert points_to_text([], "cat", count=True) == "There are none."
    assert points_to_text([(50.0, 50.0), (25.0, 75.0)], "Cats", count=True) == (
        'Counting the <points x1="25.0" y1="75.0" x2="50.0" y2="50.0" alt="cats">cats</points>'
        ' shows a total of 2.')
    assert points_to_text([(50.0, 50.0)], "cat", count=True) == (
        'Counting the <point x="50.0" y="50.0" alt="cat">cat</point> shows a total of 1.')


def test_golden_rounding_matches_numpy_half_even_on_scaled_value():
    # Molmo rounds numpy floats: 0.15*10 = 1.5 -> 2 (Python's round gives 0.1);
    # 0.05*10 = 0.5 -> 0 (even); 12.35 -> 12.4; 99.95 -> 100.0
    assert points_to_text([(0.15, 0.05)], "a") == '<point x="0.2" y="0.0" alt="a">a</point>'
    assert points_to_text([(12.35, 99.95)], "a") == '<point x="12.4" y="100.0" alt="a">a</point>'
    assert points_to_text([(-0.0, 0.0)], "a") == '<point x="0.0" y="0.0" alt="a">a</point>'


def test_points_to_text_refuses_points_off_the_image():
    with pytest.raises(PixmoError, match=r"field points\[1\]: point \(101.0, 3.0\)"):
        points_to_text([(1.0, 2.0), (101.0, 3.0)], "a")
    with pytest.raises(PixmoError, match="not within 0-100"):
        points_to_text([(float("nan"), 3.0)], "a")


# ---------------------------------------------------------------- parsing


def test_parse_points_reads_tags_in_order_and_drops_values_over_100():
    text = ('Here: <point x="12.5" y="7" alt="a">a</point> and <points x1="1.0" y1="2.0" '
            'x2="150.0" y2="3.0" x3="99.9" y3="100.0" alt="b">b</points>.')
    assert parse_points(text) == [(12.5, 7.0), (1.0, 2.0), (99.9, 100.0)]
    assert parse_points("There are none.") == []
    assert parse_points('<points x1="1.0" y2="2.0" alt="b">b</points>') == []
    assert parse_points('x="5.0" y="5.0" outside any tag') == []


def test_parse_molmo2_coords():
    text = '<points alt="cup" coords="1 1 652 535 2 189 469 3 1001 20">cup</points>'
    assert parse_points(text) == [(65.2, 53.5), (18.9, 46.9)]
    assert parse_points('<points coords="1 1 050 999;2 1 500 500">x</points>') == [
        (5.0, 99.9), (50.0, 50.0)]


# ---------------------------------------------------------------- properties

coords = st.floats(min_value=0.0, max_value=100.0, allow_nan=False, allow_infinity=False)
point_lists = st.lists(st.tuples(coords, coords), min_size=1, max_size=45)


@settings(max_examples=150, deadline=None)
@given(point_lists, st.booleans())
def test_format_then_parse_returns_the_points(points, count):
    text = points_to_text(points, "Thing", count=count)
    parsed = parse_points(text)
    assert len(parsed) == len(points)
    a, b = np.array(points), np.array(parsed)
    cheb = np.abs(a[:, None, :] - b[None, :, :]).max(axis=-1)
    rows, cols = linear_sum_assignment(cheb)
    assert cheb[rows, cols].max() <= 0.05 + 1e-9
    if count:
        assert text.endswith(f" shows a total of {len(points)}.")


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1000), coords), min_size=2, max_size=30),
       st.lists(st.integers(0, 29), max_size=10))
def test_order_and_numbering_follow_the_official_rule(xs_ys, copies):
    # many exact ties on x (x on the 0.1 grid, some points repeated) to exercise tie-breaking
    points = [(x / 10, y) for x, y in xs_ys]
    points += [points[i % len(points)] for i in copies]
    text = points_to_text(points, "t")
    numbers = [int(n) for n in re.findall(r'\bx(\d+)="', text)]
    assert numbers == list(range(1, len(points) + 1))
    assert [int(n) for n in re.findall(r'\by(\d+)="', text)] == numbers
    parsed = parse_points(text)
    keys = [x * 10000 + y for x, y in parsed]
    assert keys == sorted(keys)  # the official key, x * 10000 + y
    assert parsed == sorted(parsed)  # which on the 0.1 grid is x, then y
    assert parsed == official_order(points)


def _official_oracle(points: list[tuple[float, float]], label: str) -> str:
    """Molmo's rule as the reference describes it, step by step: a numpy array scaled by
    100 / 100, each value rounded with round(value, 1) (numpy's rounding, since the values
    are numpy floats), sorted by x * 10000 + y, printed with one decimal."""
    arr = np.array(points, dtype=np.float64)
    arr *= 100 / 100
    rounded = [[round(x, 1), round(y, 1)] for x, y in arr]
    rounded.sort(key=lambda p: p[0] * 10000 + p[1])
    if len(rounded) == 1:
        (x, y), = rounded
        return f'<point x="{x:0.1f}" y="{y:0.1f}" alt="{label}">{label}</point>'
    attrs = " ".join(f'x{i}="{x:0.1f}" y{i}="{y:0.1f}"' for i, (x, y) in
                     enumerate(rounded, start=1))
    return f'<points {attrs} alt="{label}">{label}</points>'


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(coords, coords), min_size=1, max_size=20)
       | st.lists(st.tuples(st.integers(0, 2000).map(lambda v: v / 20),
                            st.integers(0, 2000).map(lambda v: v / 20)), min_size=1, max_size=20))
def test_text_is_byte_identical_to_the_official_rule(points):
    # the second strategy puts many values exactly on .x5 and ties after rounding
    assert points_to_text(points, "blue cup") == _official_oracle(points, "blue cup")
