"""Batches: stack per-example arrays with the official padding, and normalise uint8 crops.

``collate`` pads sequences and crops the way the official collator does (text -1, crops -1,
labels -100); uint8 crops pad with 0 and carry a ``crop_mask``, and ``normalize_images`` turns
such a batch into the float32 form on whatever device it is on, within 0.5/255 of the float path
before normalisation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from molmo.preprocess.config import PreprocessConfig

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
