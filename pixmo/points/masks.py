"""Instance masks stored compactly: run-length encoding of boolean (height, width) masks.

PixMo-Points-eval releases one full boolean mask per instance; a sample keeps each as
``{"height", "width", "counts"}`` where ``counts`` are the lengths of alternating runs of
False and True pixels in row-major order, starting with False (so a mask whose first pixel
is set starts with a 0 run). Decoding gives back the exact mask.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from pixmo.errors import PixmoError


def encode_mask(mask: np.ndarray) -> dict[str, Any]:
    """The run-length form of a boolean (height, width) mask."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2 or 0 in mask.shape:
        raise ValueError(f"a mask is a non-empty 2-D array, got shape {mask.shape}")
    flat = mask.ravel()
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0]:
        counts.insert(0, 0)
    height, width = mask.shape
    return {"height": int(height), "width": int(width), "counts": [int(c) for c in counts]}


def decode_mask(rle: Mapping[str, Any]) -> np.ndarray:
    """The boolean (height, width) mask of a run-length form; one whose runs do not cover
    the mask exactly is an error naming both sizes."""
    height, width, counts = rle["height"], rle["width"], rle["counts"]
    total = sum(counts)
    if total != height * width or any(c < 0 for c in counts):
        raise PixmoError(f"mask runs cover {total} pixels, not {height} x {width}",
                         field="masks")
    values = np.arange(len(counts)) % 2 == 1  # False, True, False, ...
    return np.repeat(values, counts).reshape(height, width)


def masks_from_arrow(value: Any) -> list[dict[str, Any]] | str:
    """One parquet cell of boolean masks (list of masks, each a list of rows) run-length
    encoded straight from Arrow, so a full-size mask never becomes Python lists; what is
    wrong with the cell, as text, when it is not a list of rectangular boolean masks."""
    import pyarrow.compute as pc

    masks = value.values if value.is_valid else None
    if masks is None:
        return "masks: missing"
    out = []
    for i in range(len(masks)):
        rows = masks[i].values if masks[i].is_valid else None
        widths = pc.list_value_length(rows).to_numpy(zero_copy_only=False) if rows else []
        if rows is None or len(rows) == 0 or rows.null_count or len(set(widths)) != 1:
            return f"masks[{i}]: not a rectangle of rows"
        flat = rows.flatten()
        if flat.null_count or widths[0] == 0:
            return f"masks[{i}]: a null or empty row"
        out.append(encode_mask(flat.to_numpy(zero_copy_only=False).reshape(len(rows), -1)))
    return out


def check_masks(masks: list[dict[str, Any]] | str, points: int, height: int,
                width: int) -> str | None:
    """What keeps ``masks`` from being one mask per point covering a height x width image."""
    if isinstance(masks, str):
        return masks
    if len(masks) != points:
        return f"masks: {len(masks)} for {points} point(s)"
    for i, mask in enumerate(masks):
        if (mask["height"], mask["width"]) != (height, width):
            return (f"masks[{i}]: {mask['height']} x {mask['width']}, not the displayed image's "
                    f"{height} x {width}")
    return None
