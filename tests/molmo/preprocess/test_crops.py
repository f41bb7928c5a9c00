"""Multi-crop image math: tiling, masks and token layout against the official processor's."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from PIL import Image

from molmo.preprocess.config import PreprocessConfig
from molmo.preprocess.crops import image_layout, patchify, preprocess_image, select_tiling
from tests.molmo.preprocess.stub_tokenizer import DATA, StubTokenizer


def _load(case_dir, name: str) -> np.ndarray:
    return np.load(case_dir / f"{name}.npy")


@pytest.mark.parametrize(
    ("hw", "tiling"),
    [
        ((336, 336), (1, 1)),
        ((480, 640), (2, 3)),
        ((1000, 200), (4, 1)),
        ((768, 1024), (3, 4)),
        ((64, 1500), (1, 1)),
        ((17, 23), (1, 1)),
        ((300, 3000), (1, 12)),
        ((337, 337), (2, 2)),
        ((112, 500), (1, 2)),
        ((2000, 150), (9, 1)),
        ((100, 300), (1, 1)),
    ],
)
def test_select_tiling_matches_official_table(hw, tiling):
    h, w = hw
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the 112 px division by zero must stay silent
        assert select_tiling(h - 112, w - 112, 224, 12) == tiling


def test_mask_quirk_off_gives_each_crops_own_mask():
    d = DATA / "ex_480x640"
    image = Image.open(d / "image.png")
    ids = StubTokenizer.image_ids
    fixed = preprocess_image(image, PreprocessConfig(official_mask_quirk=False), ids)
    quirk = preprocess_image(image, PreprocessConfig(official_mask_quirk=True), ids)
    official = _load(d, "image_masks")

    np.testing.assert_array_equal(quirk.image_masks, official)
    # Hi-res crop i keeps its own mask: the official row i-1, and no -1 row anywhere.
    np.testing.assert_array_equal(fixed.image_masks[1:], official[:-1])
    assert (fixed.image_masks >= 0).all()
    # Global view: scale float32(336/640) = 0.52499998 truncates 480 px to 251 rows (not 252),
    # centred with 42 px (3 patch rows) on top: patch row 20 holds 13 real pixel rows of 14.
    expected_global = np.ones((24, 24), np.float32)
    expected_global[:3] = 0.0
    expected_global[20] = np.float32(13 * 14 / 196)
    expected_global[21:] = 0.0
    np.testing.assert_array_equal(fixed.image_masks[0].reshape(24, 24), expected_global)
    # Everything else is unchanged by the flag.
    np.testing.assert_array_equal(fixed.images, quirk.images)
    np.testing.assert_array_equal(fixed.tokens, quirk.tokens)
    np.testing.assert_array_equal(fixed.image_input_idx, quirk.image_input_idx)


def test_partial_patch_mask_fraction():
    """A global view whose padding edge cuts a patch gives k/196 fractions."""
    image = np.zeros((100, 300, 3), np.uint8)  # global 112x336: top pad 112 px = 8 patches exactly
    out = preprocess_image(
        image, PreprocessConfig(official_mask_quirk=False), StubTokenizer.image_ids
    )
    rows = out.image_masks[0].reshape(24, 24)[:, 0]
    np.testing.assert_array_equal(rows, [0.0] * 8 + [1.0] * 8 + [0.0] * 8)
    tall = np.zeros((336, 300, 3), np.uint8)  # global 336x300: 18 px of padding each side
    cols = (
        preprocess_image(tall, PreprocessConfig(official_mask_quirk=False), StubTokenizer.image_ids)
        .image_masks[0]
        .reshape(24, 24)[0]
    )
    assert (
        cols[0] == 0.0 and cols[1] == np.float32(10 * 14 / 196) and cols[-2] == np.float32(10 / 14)
    )


def test_patchify_is_raster_order_of_row_col_channel():
    crops = np.arange(2 * 4 * 4 * 3).reshape(2, 4, 4, 3)
    patches = patchify(crops, 2)
    assert patches.shape == (2, 4, 12)
    # Patch 1 of crop 0 is rows 0-1, columns 2-3, channels interleaved per pixel.
    np.testing.assert_array_equal(patches[0, 1], crops[0, 0:2, 2:4].reshape(-1))
    np.testing.assert_array_equal(patches[1, 2], crops[1, 2:4, 0:2].reshape(-1))


def test_image_layout_of_one_crop_numbers_every_kept_token_once():
    """1x1 tiling: global 12x12 block, hi-res block of 12x12 (margins cut nothing at the edges)."""
    cfg, ids = PreprocessConfig(), StubTokenizer.image_ids
    tokens, idx = image_layout((1, 1), cfg, ids)
    block = 2 + 12 * 13
    assert len(tokens) == 2 * block and idx.shape == (2, 144)
    assert tokens[0] == ids.im_start and tokens[block - 1] == ids.im_end
    np.testing.assert_array_equal(tokens[idx[0]], ids.im_patch)
    np.testing.assert_array_equal(tokens[idx[1]], ids.im_patch)
    assert idx[0, 0] == 1 and idx[0, 12] == 1 + 13  # <im_col> closes each row
    assert idx[1, 0] == block + 1 and len(np.unique(idx)) == 288


def test_preprocess_image_shapes_for_a_2x3_tiling():
    image = Image.open(DATA / "ex_480x640" / "image.png")
    out = preprocess_image(image, PreprocessConfig(), StubTokenizer.image_ids, "uint8")
    assert out.tiling == (2, 3)
    assert out.images.shape == (7, 576, 588) and out.images.dtype == np.uint8
    assert out.image_masks.shape == (7, 576) and out.image_input_idx.shape == (7, 144)
