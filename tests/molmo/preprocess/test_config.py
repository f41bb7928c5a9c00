"""Preprocessing settings: the derived geometry and the checks that name the field."""

from __future__ import annotations

import numpy as np
import pytest

from molmo.preprocess.config import PreprocessConfig, numpy_dtype
from pixmo.errors import ConfigError


def test_defaults_give_the_released_geometry():
    cfg = PreprocessConfig()
    assert (cfg.patches_per_side, cfg.tokens_per_side, cfg.tokens_per_crop) == (24, 12, 144)
    assert (cfg.patch_dim, cfg.window_patches) == (588, 16)
    small = PreprocessConfig(crop_size=112, patch_size=14, overlap_margins=(2, 2))
    assert (small.patches_per_side, small.tokens_per_crop, small.window_patches) == (8, 16, 4)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"crop_size": 300}, "PreprocessConfig.crop_size must be a multiple of patch_size 14"),
    ({"pooling": 5}, "PreprocessConfig.pooling must divide the 24 patches per side, got 5"),
    ({"overlap_margins": (3, 4)}, "PreprocessConfig.overlap_margins must be multiples of"),
    ({"overlap_margins": (12, 12)}, "leave no window of the 24 patches per side"),
    ({"max_crops": 0}, "PreprocessConfig.max_crops must be >= 1, got 0"),
    ({"conversation_weighting": "sqrt"},
     "PreprocessConfig.conversation_weighting must be one of ('none', 'root_subsegments')"),
    ({"max_sequence_length": 0}, "PreprocessConfig.max_sequence_length must be >= 1, got 0"),
])
def test_bad_settings_name_the_field(kwargs, message):
    with pytest.raises(ConfigError) as info:
        PreprocessConfig(**kwargs)
    assert message in str(info.value)


def test_numpy_dtype_knows_the_two_transports():
    assert numpy_dtype("uint8") == np.uint8 and numpy_dtype("float32") == np.float32
    with pytest.raises(ValueError, match="pixel_dtype must be one of"):
        numpy_dtype("float16")
