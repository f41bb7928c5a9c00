"""Drawing a sample's points on its image, to look at what a dataset holds (``pixmo show``).

Points are numbered in the order Molmo writes them (so number 3 is ``x3``/``y3`` in the
answer text), each label has its own colour, and a legend beside the image names the
labels with their counts ("none" for a label marked not present). Points are in percent
of the displayed image, so the image is EXIF-rotated before drawing.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pixmo.atomic import atomic_open
from pixmo.errors import PixmoError
from pixmo.points.text import official_order

logger = logging.getLogger(__name__)

# Distinct, colour-blind-friendly hues (Okabe-Ito, then Tol's bright set); label i gets
# PALETTE[i % len(PALETTE)].
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 159, 0),
    (86, 180, 233),
    (0, 158, 115),
    (240, 228, 66),
    (0, 114, 178),
    (213, 94, 0),
    (204, 121, 167),
    (238, 102, 119),
    (34, 136, 51),
    (170, 51, 119),
)
DEFAULT_MAX_PIXELS = 100_000_000  # refuse to decode larger images (decompression bombs)


def _font(size: int) -> Any:
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def render_points(
    image_bytes: bytes,
    point_sets: Sequence[dict[str, Any]],
    out: str | Path,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Path:
    """Write ``out`` (PNG): the image with every point of ``point_sets`` and a legend.

    ``point_sets`` is the sample JSON's ``points`` list (schema ``sample``,
    ``$defs/point_set``). The file appears whole or not at all. Returns its path.
    """
    out = Path(out)
    image = _decode(image_bytes, out, max_pixels)
    canvas = _with_points(image, point_sets)
    with atomic_open(out) as fh:
        canvas.save(fh, format="PNG")
    logger.debug("drew %d label sets on %dx%d image to %s", len(point_sets), *image.size, out)
    return out


def _decode(image_bytes: bytes, out: Path, max_pixels: int) -> Any:
    """The image as displayed (EXIF-rotated, RGB); size checked before any pixel is decoded."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(image_bytes))
    except UnidentifiedImageError as exc:
        raise PixmoError(f"cannot decode image: {exc}", file=str(out)) from exc
    width, height = image.size
    if width * height > max_pixels:
        raise PixmoError(f"image is {width}x{height} = {width * height} pixels, more than "
                         f"max_pixels {max_pixels}", file=str(out))
    return ImageOps.exif_transpose(image).convert("RGB")


def _with_points(image: Any, point_sets: Sequence[dict[str, Any]]) -> Any:
    """A canvas holding ``image``, its numbered points and, to the right, the legend."""
    from PIL import Image, ImageDraw

    width, height = image.size
    scale = max(1.0, min(width, height) / 400)
    font = _font(round(12 * scale))
    line = round(18 * scale)
    entries = [(PALETTE[i % len(PALETTE)],
                f"{point_set['label']} ({len(point_set['points']) or 'none'})")
               for i, point_set in enumerate(point_sets)]
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = max((measure.textlength(text, font=font) for _, text in entries), default=0)
    legend_w = round(text_w + line * 2.5) if entries else 0
    canvas = Image.new("RGB", (width + legend_w, max(height, line * (len(entries) + 1))),
                       (255, 255, 255))
    canvas.paste(image, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for (colour, _), point_set in zip(entries, point_sets, strict=True):
        _draw_points(draw, point_set["points"], colour, (width, height), scale, font)
    for row, (colour, text) in enumerate(entries):
        top = line // 2 + row * line
        left = width + line // 2
        draw.rectangle((left, top, left + line - 4, top + line - 4), fill=colour,
                       outline=(0, 0, 0))
        draw.text((left + line + 2, top), text, fill=(0, 0, 0), font=font)
    return canvas


def _draw_points(draw: Any, points: Sequence[Sequence[float]], colour: tuple[int, int, int],
                 size: tuple[int, int], scale: float, font: Any) -> None:
    """Dots numbered in the order Molmo writes them; points are percent of ``size``."""
    radius = round(5 * scale)
    stroke = max(1, round(scale))
    for number, (x, y) in enumerate(official_order([(p[0], p[1]) for p in points]), start=1):
        cx, cy = x / 100 * size[0], y / 100 * size[1]
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=colour,
                     outline=(0, 0, 0), width=stroke)
        draw.text((cx + radius + 1, cy - radius - 1), str(number), fill=colour, font=font,
                  stroke_width=stroke, stroke_fill=(0, 0, 0))
