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
