"""Molmo's point text: points in percent to the exact answer string, and back.

Public, stable API (also importable from ``pixmo.points``):

- ``points_to_text(points, label, *, count=False) -> str``
- ``parse_points(text) -> list[tuple[float, float]]``
- ``is_point_answer(text) -> bool``
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence

import numpy as np

from pixmo.errors import PixmoError

Point = tuple[float, float]


def _round1(value: float) -> float:
    # Molmo rounds numpy values, i.e. round-half-even on value * 10 (np.round), which
    # differs from Python's decimal-exact round(): 0.15 -> 0.2 here, 0.1 in Python.
    return float(np.round(np.float64(value), 1)) + 0.0  # + 0.0 turns -0.0 into 0.0


def official_order(points: Sequence[Point]) -> list[Point]:
    """The points as Molmo writes them: rounded to 0.1 first, then sorted (stably) by
    x * 10000 + y, i.e. left to right and top to bottom on ties; numbered from 1."""
    rounded = []
    for i, (x, y) in enumerate(points):
        if not (math.isfinite(x) and math.isfinite(y) and 0 <= x <= 100 and 0 <= y <= 100):
            raise PixmoError(f"point ({x}, {y}) is not within 0-100 percent",
                             field=f"points[{i}]")
        rounded.append((_round1(x), _round1(y)))
    return sorted(rounded, key=lambda p: p[0] * 10000 + p[1])


def points_to_text(points: Sequence[Point], label: str, *, count: bool = False) -> str:
    """Molmo's answer for ``points`` ((x, y) in percent) of ``label``, byte for byte.

    One point: ``<point x="12.3" y="45.6" alt="cat">cat</point>``; several:
    ``<points x1=".." y1=".." x2=".." y2=".." alt="cat">cat</points>`` numbered from 1 in
    the official order (rounded to 0.1, sorted by x then y); none: ``There are none.``.
    With ``count`` the points come first: ``Counting the <points ...>cat</points> shows a
    total of 2.``. The label is lower-cased, as Molmo does for PixMo-Points.
    """
    if not points:
        return "There are none."
    label = label.lower()
    ordered = official_order(points)
    if len(ordered) == 1:
        x, y = ordered[0]
        tag = f'<point x="{x:0.1f}" y="{y:0.1f}" alt="{label}">{label}</point>'
    else:
        coords = " ".join(f'x{i}="{x:0.1f}" y{i}="{y:0.1f}"'
                          for i, (x, y) in enumerate(ordered, start=1))
        tag = f'<points {coords} alt="{label}">{label}</points>'
    if count:
        return f"Counting the {tag} shows a total of {len(ordered)}."
    return tag


_TAG = re.compile(r"<points?\s([^>]*)>")
_XY = re.compile(r'\bx(\d*)="\s*([0-9]+(?:\.[0-9]+)?)"\s+y(\d*)="\s*([0-9]+(?:\.[0-9]+)?)"')
_COORDS = re.compile(r'\bcoords="([0-9\t:;, .]+)"')
_COORD_TRIPLE = re.compile(r"([0-9]+) ([0-9]{3,4}) ([0-9]{3,4})")


def _molmo2_points(coords: str) -> Iterator[Point]:
    # "1 1 652 535 2 189 469": an image index, then "index x y" triples in 0-1000
    for group in re.split(r"[\t:;,]", coords):
        parts = group.strip().split(" ", 1)
        if len(parts) < 2:
            continue
        for match in _COORD_TRIPLE.finditer(parts[1]):
            x, y = int(match.group(2)), int(match.group(3))
            if x <= 1000 and y <= 1000:
                yield x / 10.0, y / 10.0


def parse_points(text: str) -> list[Point]:
    """Every point in a model answer, as (x, y) percent, in the order written.

    Reads ``<point x= y=>`` and ``<points x1= y1= ...>`` tags and Molmo2's
    ``coords="1 1 XXX YYY 2 XXX YYY"`` (0-1000) attribute. A point with a coordinate
    above 100 percent is dropped, as the official parser does; malformed text gives [].
    """
    points: list[Point] = []
    for tag in _TAG.finditer(text):
        attrs = tag.group(1)
        coords = _COORDS.search(attrs)
        if coords:
            points.extend(_molmo2_points(coords.group(1)))
            continue
        for match in _XY.finditer(attrs):
            if match.group(1) != match.group(3):
                continue  # x2 paired with y1: not a point
            x, y = float(match.group(2)), float(match.group(4))
            if x <= 100 and y <= 100:
                points.append((x, y))
    return points


_NUMBER = r'"\s*[0-9]+(?:\.[0-9]+)?"'
_ONE_POINT = re.compile(rf'<point\s+x={_NUMBER}\s+y={_NUMBER}\s+alt=".*?">.*?</point>', re.S)
_MANY_POINTS = re.compile(rf'<points\s+(?:x[0-9]+={_NUMBER}\s+y[0-9]+={_NUMBER}\s+)+'
                          r'alt=".*?">.*?</points>', re.S)


def is_point_answer(text: str) -> bool:
    """Whether the whole answer (outer whitespace aside) is one ``<point>`` or ``<points>``
    tag: the official pointing evaluation scores anything else 0 when there is something to
    point at (allenai/molmo olmo/eval/evaluators.py ``is_valid_format``; its "(x, y)" list
    and 0-1000 ``p=`` forms, which Molmo's pointing style never writes, are not read here)."""
    answer = text.strip()
    return bool(_ONE_POINT.fullmatch(answer) or _MANY_POINTS.fullmatch(answer))
