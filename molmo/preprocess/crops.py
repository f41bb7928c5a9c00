"""Multi-crop image math: tiling, resize and pad, patches, masks and the image token layout.

One image becomes a low-resolution global view (the whole image resized into one 336 px crop)
followed by up to ``max_crops`` overlapping 336 px crops of an upscaled copy; every crop is cut
into 24x24 patches of 14x14x3 pixels. The LLM sees, per image, a global block
``<im_start> 12 x (12 x <im_patch> <im_col>) <im_end>`` and a hi-res block of the same shape with
the pooled tokens that survive the overlap margins; ``image_input_idx`` says at which position in
the image block each pooled crop token is added. This follows the official HF processor of
Molmo-7B-D-0924 exactly, including its quirks (tiling of images under 112 px, the off-by-one of
``image_masks``), checked against arrays it produced (tests/data/molmo_official_tiny).

The official resize is TensorFlow's antialiased bilinear; torch ``F.interpolate`` with
``antialias=True`` matches it to about 2e-5 in [0, 1] pixel units. Crops come CLIP-normalised
("float32") or as resized pixels rounded to 0..255 ("uint8", padding 0), which
``molmo.preprocess.batching.normalize_images`` finishes on the consumer's device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from molmo.preprocess.config import PreprocessConfig, numpy_dtype
from molmo.preprocess.tokenizer import ImageTokenIds
from pixmo.errors import PixmoError


@dataclass(frozen=True)
class ImageInput:
    """One image as the model takes it; ``image_input_idx`` is relative to the block start."""

    tiling: tuple[int, int]  # (rows, cols) of hi-res crops
    images: np.ndarray  # [n_crops, 576, 588] global view first: float32 CLIP-normalised, or uint8
    image_masks: np.ndarray  # [n_crops, 576] float32, fraction of real pixels per patch
    tokens: np.ndarray  # [T] int64: global block then hi-res block
    image_input_idx: np.ndarray  # [n_crops, 144] int32 position in ``tokens``, -100 = dropped

    @classmethod
    def empty(cls, cfg: PreprocessConfig, pixel_dtype: str = "float32") -> ImageInput:
        """No image: zero crops, no tokens."""
        n_patches = cfg.patches_per_side**2
        return cls(
            (0, 0),
            np.zeros((0, n_patches, cfg.patch_dim), numpy_dtype(pixel_dtype)),
            np.zeros((0, n_patches), np.float32),
            np.zeros((0,), np.int64),
            np.zeros((0, cfg.tokens_per_crop), np.int32),
        )


def select_tiling(height: int, width: int, window: int, max_crops: int) -> tuple[int, int]:
    """(rows, cols) of ``window``-pixel tiles that fit a (height, width) area best.

    The smallest upscaling wins; if every tiling must downscale, the least downscaling wins;
    ties go to fewer tiles, then fewer rows. Replicates the official float32 arithmetic, so a
    non-positive size (images under 112 px) gives 1x1 and a zero size divides to infinity.
    """
    tilings = sorted(
        (
            (r, c)
            for r in range(1, max_crops + 1)
            for c in range(1, max_crops + 1)
            if r * c <= max_crops
        ),
        key=lambda t: (t[0] * t[1], t[0]),
    )
    candidates = np.asarray(tilings, dtype=np.int32)
    resolutions = (candidates * window).astype(np.float32)
    size = np.asarray([height, width], dtype=np.float32)
    with np.errstate(divide="ignore"):
        scale = np.min(resolutions / size, axis=-1)
    if np.all(scale < 1):
        ix = int(np.argmax(scale))
    else:
        ix = int(np.argmin(np.where(scale < 1.0, 10e9, scale)))
    rows, cols = candidates[ix]
    return int(rows), int(cols)


def resize_and_pad(
    pixels: torch.Tensor, height: int, width: int, pixel_dtype: str = "float32"
) -> tuple[np.ndarray, np.ndarray]:
    """Aspect-preserving resize of [3, H, W] pixels in [0, 1] into (height, width), centred.

    Returns pixels [height, width, 3] with 0 in the padding (float32 in [0, 1], or uint8
    round(255 x)), and a bool mask of real pixels. Scale and sizes are computed in float32 and
    truncated, as in the official code.
    """
    h, w = pixels.shape[-2:]
    scale = min(np.float32(height) / np.float32(h), np.float32(width) / np.float32(w))
    new_h = max(int(np.float32(h) * scale), 1)
    new_w = max(int(np.float32(w) * scale), 1)
    resized = F.interpolate(
        pixels[None], size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False
    )[0].clamp_(0.0, 1.0)
    dtype = numpy_dtype(pixel_dtype)
    if dtype == np.uint8:
        resized = resized.mul_(255.0).round_().to(torch.uint8)
    top, left = (height - new_h) // 2, (width - new_w) // 2
    out = np.zeros((height, width, 3), dtype)
    out[top : top + new_h, left : left + new_w] = resized.permute(1, 2, 0).numpy()
    mask = np.zeros((height, width), bool)
    mask[top : top + new_h, left : left + new_w] = True
    return out, mask


def patchify(crops: np.ndarray, patch: int) -> np.ndarray:
    """[n, S, S, *rest] -> [n, (S/p)^2, p*p*prod(rest)]: patches in raster order, (row, col, ch)."""
    n, size = crops.shape[:2]
    side = size // patch
    rest = crops.shape[3:]
    x = crops.reshape(n, side, patch, side, patch, *rest)
    x = x.transpose(0, 1, 3, 2, 4, *range(5, 5 + len(rest)))
    return x.reshape(n, side * side, -1)


def _block_tokens(rows: int, cols: int, ids: ImageTokenIds) -> np.ndarray:
    row = [ids.im_patch] * cols + [ids.im_col]
    return np.asarray([ids.im_start, *(row * rows), ids.im_end], np.int64)


def _tile_spans(n_tiles: int, cfg: PreprocessConfig) -> list[tuple[int, int]]:
    """Per tile along one axis: (first kept pooled token inside the crop, number kept)."""
    left, right = cfg.overlap_margins
    spans = []
    for i in range(n_tiles):
        patches = cfg.window_patches + (left if i == 0 else 0) + (right if i == n_tiles - 1 else 0)
        start = 0 if i == 0 else left // cfg.pooling
        spans.append((start, -(-patches // cfg.pooling)))
    return spans


def image_layout(
    tiling: tuple[int, int], cfg: PreprocessConfig, ids: ImageTokenIds
) -> tuple[np.ndarray, np.ndarray]:
    """Tokens of both blocks and, per crop and pooled token, its position among them.

    Hi-res tokens kept after the overlap margins are numbered in raster order over the stitched
    image; tokens inside a margin get -100.
    """
    rows, cols = tiling
    t = cfg.tokens_per_side
    row_spans, col_spans = _tile_spans(rows, cfg), _tile_spans(cols, cfg)
    n_rows = sum(n for _, n in row_spans)
    n_cols = sum(n for _, n in col_spans)
    tokens = np.concatenate([_block_tokens(t, t, ids), _block_tokens(n_rows, n_cols, ids)])

    idx = np.full((1 + rows * cols, t, t), -100, np.int64)
    grid = np.arange(t)
    idx[0] = 1 + grid[:, None] * (t + 1) + grid[None, :]
    hi_start = 2 + t * (t + 1) + 1  # first hi-res <im_patch>, after the global block and <im_start>
    row_off = np.cumsum([0] + [n for _, n in row_spans])
    col_off = np.cumsum([0] + [n for _, n in col_spans])
    for i, (y0, ny) in enumerate(row_spans):
        for j, (x0, nx) in enumerate(col_spans):
            gy = row_off[i] + np.arange(ny)
            gx = col_off[j] + np.arange(nx)
            idx[1 + i * cols + j, y0 : y0 + ny, x0 : x0 + nx] = (
                hi_start + gy[:, None] * (n_cols + 1) + gx[None, :]
            )
    return tokens, idx.reshape(1 + rows * cols, t * t).astype(np.int32)


def _to_pixels(image: Any) -> torch.Tensor:
    """PIL image or uint8 [H, W, 3] array -> float32 [3, H, W] in [0, 1]."""
    if hasattr(image, "convert"):
        image = np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise PixmoError(
            f"image must be a PIL image or a uint8 [H, W, 3] array, got {arr.dtype} {arr.shape}",
            field="image",
        )
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise PixmoError(f"image is empty: {arr.shape}", field="image")
    return torch.tensor(arr).permute(2, 0, 1).float() / 255.0


def preprocess_image(
    image: Any, cfg: PreprocessConfig, ids: ImageTokenIds, pixel_dtype: str = "float32"
) -> ImageInput:
    """Global view + overlapping crops, patches, masks and token layout of one image.

    ``pixel_dtype`` "uint8" leaves the crops unnormalised (see ``molmo.preprocess.batching``).
    """
    pixels = _to_pixels(image)
    h, w = pixels.shape[-2:]
    crop, patch = cfg.crop_size, cfg.patch_size
    margin_px = patch * sum(cfg.overlap_margins)
    window_px = patch * cfg.window_patches
    tiling = select_tiling(h - margin_px, w - margin_px, window_px, cfg.max_crops)
    rows, cols = tiling

    hires, hires_mask = resize_and_pad(
        pixels, rows * window_px + margin_px, cols * window_px + margin_px, pixel_dtype
    )
    glob, glob_mask = resize_and_pad(pixels, crop, crop, pixel_dtype)
    crops = [glob]
    masks = [glob_mask]
    for i in range(rows):
        for j in range(cols):
            y0, x0 = i * window_px, j * window_px
            crops.append(hires[y0 : y0 + crop, x0 : x0 + crop])
            masks.append(hires_mask[y0 : y0 + crop, x0 : x0 + crop])

    images = patchify(np.stack(crops), patch)
    if pixel_dtype == "float32":
        mean = np.asarray(cfg.image_mean, np.float32)
        std = np.asarray(cfg.image_std, np.float32)
        images = ((images.reshape(*images.shape[:2], -1, 3) - mean) / std).reshape(images.shape)
    image_masks = patchify(np.stack(masks), patch).astype(np.float32).mean(axis=-1)
    if cfg.official_mask_quirk:
        # Official off-by-one: the hi-res masks, then a row of -1, paired with [global, hi-res...].
        image_masks = np.concatenate([image_masks[1:], np.full_like(image_masks[:1], -1.0)])
    tokens, image_input_idx = image_layout(tiling, cfg, ids)
    return ImageInput(tiling, images, image_masks, tokens, image_input_idx)
