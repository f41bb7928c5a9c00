"""Inline SVG charts for the report page: histograms, horizontal bars and a line chart.

Drawn as plain SVG text so the page needs no plotting library and no network:
each chart is one ``<svg>`` element with a ``<title>``, ticks at round numbers,
and a hover title on every bar giving its exact value.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

_W, _H = 560, 240
_LEFT, _RIGHT, _TOP, _BOTTOM = 56, 16, 16, 44
_BAR = "#3b75af"


def _nice_ticks(low: float, high: float, n: int = 5) -> list[float]:
    if high <= low:
        high = low + 1
    raw = (high - low) / n
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 2.5, 5, 10) if raw <= m * step)
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]


def fmt_number(value: float) -> str:
    """An integer without a decimal point, anything else to three significant digits."""
    if value == int(value) and abs(value) < 1e6:
        return str(int(value))
    return f"{value:.3g}"


def _svg(body: list[str], title: str, width: int = _W, height: int = _H) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="{html.escape(title)}" '
            f'class="plot"><title>{html.escape(title)}</title>'
            f'<rect width="{width}" height="{height}" fill="#fff"/>{"".join(body)}</svg>')


def _axes(x0: float, x1: float, y0: float, y1: float, xlabel: str, ylabel: str,
          x_ticks: bool = True) -> tuple[list[str], Any, Any]:
    """Axes with ticks; returns the SVG parts and the two data-to-pixel maps."""
    pw, ph = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM

    def sx(x: float) -> float:
        return _LEFT + (x - x0) / ((x1 - x0) or 1) * pw

    def sy(y: float) -> float:
        return _TOP + ph - (y - y0) / ((y1 - y0) or 1) * ph

    parts = [f'<line x1="{_LEFT}" y1="{_TOP + ph}" x2="{_LEFT + pw}" y2="{_TOP + ph}" '
             'stroke="#333"/>',
             f'<line x1="{_LEFT}" y1="{_TOP}" x2="{_LEFT}" y2="{_TOP + ph}" stroke="#333"/>']
    for t in _nice_ticks(y0, y1):
        if t > y1 + 1e-9:
            continue
        parts.append(f'<line x1="{_LEFT - 4}" y1="{sy(t):.1f}" x2="{_LEFT + pw}" '
                     f'y2="{sy(t):.1f}" stroke="#ddd"/>'
                     f'<text x="{_LEFT - 6}" y="{sy(t) + 4:.1f}" text-anchor="end" '
                     f'font-size="11">{fmt_number(t)}</text>')
    if x_ticks:
        for t in _nice_ticks(x0, x1, 6):
            if t > x1 + 1e-9:
                continue
            parts.append(f'<line x1="{sx(t):.1f}" y1="{_TOP + ph}" x2="{sx(t):.1f}" '
                         f'y2="{_TOP + ph + 4}" stroke="#333"/>'
                         f'<text x="{sx(t):.1f}" y="{_TOP + ph + 16}" text-anchor="middle" '
                         f'font-size="11">{fmt_number(t)}</text>')
    parts.append(f'<text x="{_LEFT + pw / 2}" y="{_H - 6}" text-anchor="middle" '
                 f'font-size="12">{html.escape(xlabel)}</text>'
                 f'<text x="12" y="{_TOP + ph / 2}" text-anchor="middle" font-size="12" '
                 f'transform="rotate(-90 12 {_TOP + ph / 2})">{html.escape(ylabel)}</text>')
    return parts, sx, sy


def histogram_svg(values: Sequence[float], title: str, xlabel: str, *, bins: int = 20,
                  integer: bool = False) -> str:
    """Counts of ``values`` in equal bins (one bin per integer when ``integer``
    and the range is small)."""
    if not values:
        return _svg([f'<text x="{_W / 2}" y="{_H / 2}" text-anchor="middle">no data</text>'],
                    title)
    low, high = min(values), max(values)
    if integer and high - low + 1 <= 40:
        edges = [low - 0.5 + i for i in range(int(high - low) + 2)]
    else:
        span = (high - low) or 1.0
        edges = [low + span * i / bins for i in range(bins + 1)]
    counts = [0] * (len(edges) - 1)
    for v in values:
        i = min(len(counts) - 1, int((v - edges[0]) / (edges[-1] - edges[0]) * len(counts)))
        counts[i] += 1
    parts, sx, sy = _axes(edges[0], edges[-1], 0, max(counts), xlabel, "count")
    for i, c in enumerate(counts):
        if c:
            x, w = sx(edges[i]), sx(edges[i + 1]) - sx(edges[i])
            parts.append(f'<rect x="{x + 0.5:.1f}" y="{sy(c):.1f}" width="{max(w - 1, 1):.1f}" '
                         f'height="{sy(0) - sy(c):.1f}" fill="{_BAR}">'
                         f'<title>{fmt_number(edges[i])}-{fmt_number(edges[i + 1])}: {c}'
                         '</title></rect>')
    return _svg(parts, title)


def bar_chart_svg(items: Sequence[tuple[str, float]], title: str) -> str:
    """Horizontal bars, one per (name, value)."""
    row = 22
    height = max(60, _TOP + row * len(items) + 24)
    name_w = 170
    top = max((v for _, v in items), default=0) or 1
    span = _W - name_w - 60
    parts = []
    for i, (name, value) in enumerate(items):
        y = _TOP + i * row
        w = value / top * span
        parts.append(f'<text x="{name_w - 6}" y="{y + 15}" text-anchor="end" font-size="12">'
                     f'{html.escape(name)}</text>'
                     f'<rect x="{name_w}" y="{y + 3}" width="{max(w, 1):.1f}" height="{row - 6}" '
                     f'fill="{_BAR}"/>'
                     f'<text x="{name_w + w + 4:.1f}" y="{y + 15}" font-size="12">'
                     f'{fmt_number(value)}</text>')
    if not items:
        parts.append(f'<text x="{_W / 2}" y="36" text-anchor="middle">none</text>')
    return _svg(parts, title, height=height)


def line_chart_svg(xs: Sequence[float], ys: Sequence[float], title: str, xlabel: str,
                   ylabel: str) -> str:
    """``ys`` against ``xs`` as one line; the y axis starts at 0 for non-negative values."""
    if not xs:
        return _svg([f'<text x="{_W / 2}" y="{_H / 2}" text-anchor="middle">no data</text>'],
                    title)
    low, high = min(ys), max(ys)
    pad = (high - low) * 0.05 or abs(high) * 0.05 or 1.0
    parts, sx, sy = _axes(min(xs), max(xs), min(0.0, low - pad) if low >= 0 else low - pad,
                          high + pad, xlabel, ylabel)
    path = " ".join(f"{'M' if i == 0 else 'L'}{sx(x):.1f},{sy(y):.1f}"
                    for i, (x, y) in enumerate(zip(xs, ys, strict=True)))
    parts.append(f'<path d="{path}" fill="none" stroke="{_BAR}" stroke-width="1.5"/>')
    if len(xs) == 1:
        parts.append(f'<circle cx="{sx(xs[0]):.1f}" cy="{sy(ys[0]):.1f}" r="3" fill="{_BAR}"/>')
    return _svg(parts, title)
