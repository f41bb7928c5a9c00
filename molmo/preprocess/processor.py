"""Molmo's image preprocessing and token layout, in numpy + PyTorch (no TensorFlow).

One image becomes a low-resolution global view (the whole image resized into one 336 px crop)
followed by up to ``max_crops`` overlapping 336 px crops of an upscaled copy; every crop is cut
into 24x24 patches of 14x14x3 pixels. The LLM sees, per image, a global block
``<im_start> 12 x (12 x <im_patch> <im_col>) <im_end>`` and a hi-res block of the same shape with
the pooled tokens that survive the overlap margins; ``image_input_idx`` says at which position in
``input_ids`` each pooled crop token is added. This follows the official HF processor of
Molmo-7B-D-0924 exactly, including its quirks (tiling of images under 112 px, the off-by-one of
``image_masks``), checked against arrays it produced (tests/data/molmo_official_tiny).

The official resize is TensorFlow's antialiased bilinear; torch ``F.interpolate`` with
``antialias=True`` matches it to about 2e-5 in [0, 1] pixel units.

Crops come in two forms (``pixel_dtype``): "float32", CLIP-normalised and model-ready (the
official form), or "uint8", the resized pixels rounded to 0..255 (padding 0), a quarter of the
bytes for DataLoader workers to ship; :func:`normalize_images` turns a collated uint8 batch into
the float32 form on whatever device it is on, within 0.5/255 of the float path before
normalisation.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from molmo.preprocess.chat import (
    ChatConfig,
    Conversation,
    TokenizedConversation,
    as_conversations,
    tokenize_conversation,
)
from molmo.preprocess.tokenizer import ImageTokenIds, TextTokenizer
from pixmo.errors import ConfigError, PixmoError

logger = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PREFIX_SUBSEGMENT = 10000  # BOS + image tokens: visible to every conversation
WEIGHTINGS = ("none", "root_subsegments")
PIXEL_DTYPES = ("float32", "uint8")


@dataclass(frozen=True)
class PreprocessConfig:
    """Multi-crop image settings and sequence options. Defaults are the released models'.

    ``official_mask_quirk``: reproduce the off-by-one ``image_masks`` of the official code
    (mask row i belongs to hi-res crop i, the last row is all -1). Keep it on for official
    checkpoints, which were trained with it; turn it off for new training to get each crop's
    own mask (global view first).
    ``conversation_weighting``: "root_subsegments" scales the loss of an example with k
    conversations by sqrt(1/k) (official fine-tuning); "none" leaves it at 1.
    ``max_sequence_length``: truncate longer examples at the end (the image block must fit).
    """

    crop_size: int = 336
    patch_size: int = 14
    pooling: int = 2
    max_crops: int = 12
    overlap_margins: tuple[int, int] = (4, 4)
    image_mean: tuple[float, float, float] = CLIP_MEAN
    image_std: tuple[float, float, float] = CLIP_STD
    official_mask_quirk: bool = True
    conversation_weighting: str = "none"
    max_sequence_length: int | None = None
    chat: ChatConfig = field(default_factory=ChatConfig)

    def __post_init__(self) -> None:
        if self.crop_size % self.patch_size:
            raise ConfigError(f"must be a multiple of patch_size {self.patch_size}, got "
                              f"{self.crop_size}", field="PreprocessConfig.crop_size")
        if self.patches_per_side % self.pooling:
            raise ConfigError(f"must divide the {self.patches_per_side} patches per side, got "
                              f"{self.pooling}", field="PreprocessConfig.pooling")
        left, right = self.overlap_margins
        if left % self.pooling or right % self.pooling:
            raise ConfigError(f"must be multiples of pooling {self.pooling}, got "
                              f"{self.overlap_margins}", field="PreprocessConfig.overlap_margins")
        if self.window_patches < 1:
            raise ConfigError(f"{self.overlap_margins} leave no window of the "
                              f"{self.patches_per_side} patches per side",
                              field="PreprocessConfig.overlap_margins")
        if self.max_crops < 1:
            raise ConfigError(f"must be >= 1, got {self.max_crops}",
                              field="PreprocessConfig.max_crops")
        if self.conversation_weighting not in WEIGHTINGS:
            raise ConfigError(f"must be one of {WEIGHTINGS}, got {self.conversation_weighting!r}",
                              field="PreprocessConfig.conversation_weighting")
        if self.max_sequence_length is not None and self.max_sequence_length < 1:
            raise ConfigError(f"must be >= 1, got {self.max_sequence_length}",
                              field="PreprocessConfig.max_sequence_length")

    @property
    def patches_per_side(self) -> int:  # 24
        return self.crop_size // self.patch_size

    @property
    def tokens_per_side(self) -> int:  # 12 pooled tokens per crop side
        return self.patches_per_side // self.pooling

    @property
    def tokens_per_crop(self) -> int:  # 144
        return self.tokens_per_side**2

    @property
    def patch_dim(self) -> int:  # 588 = 14 * 14 * 3
        return self.patch_size * self.patch_size * 3

    @property
    def window_patches(self) -> int:  # 16: patches per crop left after the margins
        return self.patches_per_side - sum(self.overlap_margins)


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
            np.zeros((0, n_patches, cfg.patch_dim), _numpy_dtype(pixel_dtype)),
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


def _numpy_dtype(pixel_dtype: str) -> np.dtype:
    if pixel_dtype not in PIXEL_DTYPES:
        raise ValueError(f"pixel_dtype must be one of {PIXEL_DTYPES}, got {pixel_dtype!r}")
    return np.dtype(pixel_dtype)


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
    dtype = _numpy_dtype(pixel_dtype)
    if dtype == np.uint8:
        resized = resized.mul_(255.0).round_().to(torch.uint8)
    top, left = (height - new_h) // 2, (width - new_w) // 2
    out = np.zeros((height, width, 3), dtype)
    out[top : top + new_h, left : left + new_w] = resized.permute(1, 2, 0).numpy()
    mask = np.zeros((height, width), bool)
    mask[top : top + new_h, left : left + new_w] = True
    return out, mask


def _patchify(crops: np.ndarray, patch: int) -> np.ndarray:
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

    ``pixel_dtype`` "uint8" leaves the crops unnormalised (see :func:`normalize_images`).
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

    images = _patchify(np.stack(crops), patch)
    if pixel_dtype == "float32":
        mean = np.asarray(cfg.image_mean, np.float32)
        std = np.asarray(cfg.image_std, np.float32)
        images = ((images.reshape(*images.shape[:2], -1, 3) - mean) / std).reshape(images.shape)
    image_masks = _patchify(np.stack(masks), patch).astype(np.float32).mean(axis=-1)
    if cfg.official_mask_quirk:
        # Official off-by-one: the hi-res masks, then a row of -1, paired with [global, hi-res...].
        image_masks = np.concatenate([image_masks[1:], np.full_like(image_masks[:1], -1.0)])
    tokens, image_input_idx = image_layout(tiling, cfg, ids)
    return ImageInput(tiling, images, image_masks, tokens, image_input_idx)


class MolmoProcessor:
    """Turns (image, text) into the model's arrays, per example; picklable, no global state.

    The image block goes right after BOS (as in the official HF processor); each conversation
    follows with its own ``subsegment_ids`` value k and positions restarting after the shared
    prefix (BOS + image tokens, subsegment ``PREFIX_SUBSEGMENT``), so one image can carry
    several independent conversations in one sequence. The model lets query i see key j when
    j <= i and ``subsegment_ids[i] <= subsegment_ids[j]`` (so conversations never see each
    other); with one conversation this is plain causal attention.

    ``pixel_dtype`` "uint8" emits unnormalised uint8 crops, for the training loader to ship
    cheaply; the model needs them through ``collate`` and :func:`normalize_images`.
    """

    def __init__(
        self,
        tokenizer: TextTokenizer,
        config: PreprocessConfig | None = None,
        *,
        pixel_dtype: str = "float32",
    ) -> None:
        _numpy_dtype(pixel_dtype)
        self.tokenizer = tokenizer
        self.config = config or PreprocessConfig()
        self.pixel_dtype = pixel_dtype

    @property
    def bos_id(self) -> int:
        """BOS, or EOS for tokenizers without one (Qwen2, OLMo), as the official code does."""
        bos = self.tokenizer.bos_id
        return self.tokenizer.eos_id if bos is None else bos

    def __call__(
        self,
        image: Any | None,
        text: str | Sequence[str] | Sequence[Conversation],
        *,
        style: str | None = None,
        weight: float = 1.0,
    ) -> dict[str, np.ndarray]:
        """Arrays for one example.

        ``text``: a prompt (inference), a list of messages alternating user/assistant, or a list
        of :class:`Conversation`. ``weight`` multiplies the example's loss weights.

        Returns numpy arrays: ``input_ids`` [L] int64; ``labels`` [L] int64, the next token
        where it is a target, else -100; ``loss_masks`` [L] float32, the weight of ``labels``;
        ``position_ids`` [L] int64; ``subsegment_ids`` [L] int32; ``images`` [N, 576, 588]
        float32 (or uint8, see ``pixel_dtype``); ``image_masks`` [N, 576] float32;
        ``image_input_idx`` [N, 144] int32 (absolute positions in ``input_ids``, -100 = dropped
        token). N = 0 without an image.
        """
        cfg = self.config
        if not weight >= 0.0:
            raise PixmoError(f"example weight must be >= 0, got {weight}", field="weight")
        conversations = as_conversations(text, style)
        if image is None:
            img = ImageInput.empty(cfg, self.pixel_dtype)
        else:
            img = preprocess_image(image, cfg, self.tokenizer.image_ids, self.pixel_dtype)
        prefix = np.concatenate([[self.bos_id], img.tokens]).astype(np.int64)
        out = self._sequence(
            prefix, [tokenize_conversation(c, self.tokenizer, cfg.chat) for c in conversations]
        )
        scale = weight
        if cfg.conversation_weighting == "root_subsegments":
            scale *= float(np.sqrt(1.0 / len(conversations)))
        out["loss_masks"] = np.where(out["labels"] >= 0, scale, 0.0).astype(np.float32)
        out["images"] = img.images
        out["image_masks"] = img.image_masks
        # The image block starts at position 1, right after BOS.
        out["image_input_idx"] = np.where(
            img.image_input_idx >= 0, img.image_input_idx + 1, -100
        ).astype(np.int32)
        return out

    def _sequence(
        self, prefix: np.ndarray, conversations: list[TokenizedConversation]
    ) -> dict[str, np.ndarray]:
        """Prefix then conversations: ids, next-token labels, positions and subsegments."""
        n_prefix = len(prefix)
        ids, targets = [prefix], [np.zeros(n_prefix, bool)]
        positions = [np.arange(n_prefix)]
        subsegments = [np.full(n_prefix, PREFIX_SUBSEGMENT)]
        for k, conv in enumerate(conversations):
            ids.append(conv.ids)
            targets.append(conv.is_target)
            positions.append(n_prefix + np.arange(len(conv.ids)))
            subsegments.append(np.full(len(conv.ids), k))
        input_ids = np.concatenate(ids)
        length = len(input_ids)
        limit = self.config.max_sequence_length
        if limit is not None and length > limit:
            if n_prefix > limit:
                raise PixmoError(
                    f"BOS + image block need {n_prefix} tokens, more than max_sequence_length "
                    f"{limit}",
                    field="max_sequence_length",
                )
            logger.debug("truncating example from %d to %d tokens", length, limit)
            length = limit
        input_ids = input_ids[:length]
        is_target = np.concatenate(targets)[:length]
        labels = np.full(length, -100, np.int64)
        labels[:-1] = np.where(is_target[1:], input_ids[1:], -100)
        return {
            "input_ids": input_ids,
            "labels": labels,
            "position_ids": np.concatenate(positions)[:length].astype(np.int64),
            "subsegment_ids": np.concatenate(subsegments)[:length].astype(np.int32),
        }


# Padding values of the official collator: text -1, crops -1; labels use -100, weights 0.
SEQUENCE_PADDING = {
    "input_ids": -1,
    "labels": -100,
    "loss_masks": 0,
    "position_ids": 0,
    "subsegment_ids": -1,
}
CROP_PADDING = {"images": -1, "image_masks": -1, "image_input_idx": -1}


def collate(
    examples: Sequence[dict[str, np.ndarray]],
    *,
    pad_to_length: int | None = None,
    pad_crops_to: int | None = None,
) -> dict[str, torch.Tensor]:
    """Stack examples into a batch of torch tensors, padding sequences and crops.

    Sequences pad to the longest (or ``pad_to_length``), crops to the most crops (or
    ``pad_crops_to``, e.g. ``max_crops + 1`` for static shapes). Padded crops are all -1,
    which the model treats as absent; padded ``input_ids`` are -1. uint8 crops pad with 0
    instead, and the batch gains ``crop_mask`` [B, N] bool (True for real crops), which
    :func:`normalize_images` needs to restore the -1 crops.
    """
    if not examples:
        raise ValueError("collate needs at least one example")
    keys = set(SEQUENCE_PADDING) | set(CROP_PADDING)
    for i, ex in enumerate(examples):
        if set(ex) != keys:
            raise ValueError(f"example {i} has keys {sorted(ex)}, expected {sorted(keys)}")
    dtypes = sorted({str(np.asarray(ex["images"]).dtype) for ex in examples})
    uint8 = "uint8" in dtypes
    if uint8 and len(dtypes) > 1:
        raise ValueError(
            f"collate: images mix dtypes {dtypes}; uint8 crops must not be "
            "batched with normalised ones"
        )
    crop_padding = {**CROP_PADDING, "images": 0} if uint8 else CROP_PADDING
    batch: dict[str, torch.Tensor] = {}
    for padding, target in ((SEQUENCE_PADDING, pad_to_length), (crop_padding, pad_crops_to)):
        for key, value in padding.items():
            arrays = [np.asarray(ex[key]) for ex in examples]
            longest = max(a.shape[0] for a in arrays)
            size = longest if target is None else target
            if size < longest:
                raise ValueError(f"collate: {key} has length {longest}, more than the pad {size}")
            out = np.full((len(arrays), size, *arrays[0].shape[1:]), value, arrays[0].dtype)
            for b, a in enumerate(arrays):
                out[b, : a.shape[0]] = a
            batch[key] = torch.from_numpy(out)
    if uint8:
        crops = torch.tensor([len(ex["images"]) for ex in examples])
        batch["crop_mask"] = torch.arange(batch["images"].shape[1])[None, :] < crops[:, None]
    return batch


def normalize_images(
    batch: dict[str, torch.Tensor], cfg: PreprocessConfig
) -> dict[str, torch.Tensor]:
    """A collated uint8 batch in the model-ready form, on the batch's device.

    ``images`` become float32 (u8 / 255 - mean) / std per channel and padded crops all -1, as
    the float32 path gives them; ``crop_mask`` is dropped, the other tensors are kept as they
    are. Meant to run after the batch has moved to the training device, so the workers and the
    host-to-device copy carry a quarter of the bytes.
    """
    out = dict(batch)
    images, crop_mask = out.pop("images"), out.pop("crop_mask")
    if images.dtype != torch.uint8:
        raise ValueError(f"normalize_images expects uint8 images, got {images.dtype}")
    # Channels interleave along the last axis (patch pixels x 3); per-position constants keep
    # the arithmetic on a contiguous axis.
    repeat = images.shape[-1] // 3
    mean = torch.tensor(cfg.image_mean, dtype=torch.float32, device=images.device).repeat(repeat)
    std = torch.tensor(cfg.image_std, dtype=torch.float32, device=images.device).repeat(repeat)
    pixels = images.float().div_(255.0).sub_(mean).div_(std)
    out["images"] = pixels.masked_fill_(~crop_mask[..., None, None], -1.0)
    return out
