"""Preprocessing settings: crop geometry, CLIP normalisation, sequence options.

One config drives the multi-crop image math (``molmo/preprocess/crops.py``), the processor's
token layout and loss weights (``molmo/preprocess/processor.py``) and the uint8 batch
normalisation (``molmo/preprocess/batching.py``); it is the ``preprocess:`` section of a
training YAML.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from molmo.preprocess.chat import ChatConfig
from pixmo.config import at_least, check_fields, one_of
from pixmo.errors import ConfigError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
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
        check_fields(self, max_crops=at_least(1), conversation_weighting=one_of(WEIGHTINGS),
                     max_sequence_length=at_least(1))

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


def numpy_dtype(pixel_dtype: str) -> np.dtype:
    """The numpy dtype crops travel in: "float32" (model-ready) or "uint8" (unnormalised)."""
    if pixel_dtype not in PIXEL_DTYPES:
        raise ValueError(f"pixel_dtype must be one of {PIXEL_DTYPES}, got {pixel_dtype!r}")
    return np.dtype(pixel_dtype)
