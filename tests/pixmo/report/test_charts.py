"""Tests of pixmo.report.charts: inline SVG charts whose bars and lines carry their numbers."""

from __future__ import annotations

import re

import pytest

from pixmo.report.charts import bar_chart_svg, fmt_number, histogram_svg, line_chart_svg


def test_plots_draw_their_numbers():
    svg = histogram_svg([1, 1, 2, 5], "t", "x", integer=True)
    bars = re.findall(r'height="([\d.]+)" fill="#3b75af"><title>([^<]+)</title>', svg)
    assert [t for _, t in bars] == ["0.5-1.5: 2", "1.5-2.5: 1", "4.5-5.5: 1"]
    heights = [float(h) for h, _ in bars]
    assert heights[0] == pytest.approx(2 * heights[1])
    svg = bar_chart_svg([("a", 4), ("b", 1)], "t")
    widths = [float(w) for w in re.findall(r'<rect x="170" y="[\d.]+" width="([\d.]+)"', svg)]
    assert widths[0] == pytest.approx(4 * widths[1])
    assert "no data" in histogram_svg([], "t", "x")


def test_line_chart_draws_every_point_in_order():
    svg = line_chart_svg([0, 10, 20], [3.0, 1.0, 2.0], "loss", "step", "loss")
    (path,) = re.findall(r'<path d="([^"]+)"', svg)
    moves = re.findall(r"([ML])([\d.]+),([\d.]+)", path)
    assert [m[0] for m in moves] == ["M", "L", "L"]
    xs = [float(m[1]) for m in moves]
    ys = [float(m[2]) for m in moves]
    assert xs[1] - xs[0] == pytest.approx(xs[2] - xs[1])
    assert ys[1] > ys[2] > ys[0]  # SVG y grows downwards: loss 1 lowest on the page
    assert "<circle" in line_chart_svg([5], [1.0], "t", "x", "y")  # one point still shows
    assert "no data" in line_chart_svg([], [], "t", "x", "y")


def test_ticks_are_round_numbers():
    svg = histogram_svg([0.0, 0.3, 0.7, 1.0], "t", "x", bins=4)
    labels = re.findall(r'font-size="11">([^<]+)</text>', svg)
    assert {"0", "0.2", "0.4", "0.6", "0.8", "1"} <= set(labels)
    assert [fmt_number(v) for v in (3.0, 2.5, 1e7, 0.000123)] == ["3", "2.5", "1e+07", "0.000123"]


def test_empty_bar_chart_says_none():
    svg = bar_chart_svg([], "rejects")
    assert ">none</text>" in svg and 'aria-label="rejects"' in svg
