"""Pointing: validated click annotations, Molmo's point text, prompts and metrics.

``pixmo.points.points_to_text`` and ``pixmo.points.parse_points`` are public, stable API.
"""

from pixmo.points.text import parse_points, points_to_text

__all__ = ["parse_points", "points_to_text"]
