"""Batches: the official collator's padding, and uint8 crops normalised on the consumer side."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from molmo.preprocess.batching import collate, normalize_images
from molmo.preprocess.config import PreprocessConfig
from molmo.preprocess.processor import MolmoProcessor
from tests.molmo.preprocess.stub_tokenizer import DATA, StubTokenizer


@pytest.fixture(scope="module")
def processor() -> MolmoProcessor:
    return MolmoProcessor(StubTokenizer(), PreprocessConfig())


def test_collate_pads_like_the_official_collator(processor):
    small = processor(Image.open(DATA / "layouts" / "17x23" / "image.png"), ["q", "a"])  # 2 crops
    big = processor(Image.open(DATA / "layouts" / "337x337" / "image.png"), "question?")  # 5 crops
    text = processor(None, "no image")
    batch = collate([small, big, text])
    L = max(len(small["input_ids"]), len(big["input_ids"]))
    assert batch["input_ids"].shape == (3, L) and batch["input_ids"].dtype == torch.int64
    assert batch["images"].shape == (3, 5, 576, 588)
    assert batch["image_masks"].shape == (3, 5, 576) and batch["image_input_idx"].shape == (
        3,
        5,
        144,
    )
    n = len(small["input_ids"])
    assert (batch["input_ids"][0, n:] == -1).all() and (batch["labels"][0, n:] == -100).all()
    assert (batch["loss_masks"][0, n:] == 0).all()
    np.testing.assert_array_equal(batch["input_ids"][0, :n].numpy(), small["input_ids"])
    np.testing.assert_array_equal(batch["images"][0, :2].numpy(), small["images"])
    assert (batch["images"][0, 2:] == -1).all() and (batch["image_masks"][2] == -1).all()
    assert (batch["image_input_idx"][0, 2:] == -1).all()

    fixed = collate([small, text], pad_to_length=512, pad_crops_to=13)
    assert fixed["input_ids"].shape == (2, 512) and fixed["images"].shape == (2, 13, 576, 588)
    with pytest.raises(ValueError, match="more than the pad 100"):
        collate([small], pad_to_length=100)


@pytest.mark.parametrize("quirk", [True, False])
def test_uint8_crops_normalised_match_the_float_path(quirk):
    """uint8 transport (round(255 x), then normalize_images after collate) gives the float32
    batch: same keys, layout and -1 crops, pixels within the rounding bound of 0.5/255."""
    cfg = PreprocessConfig(official_mask_quirk=quirk)
    as_float = MolmoProcessor(StubTokenizer(), cfg)
    as_uint8 = MolmoProcessor(StubTokenizer(), cfg, pixel_dtype="uint8")
    inputs = [
        (Image.open(DATA / "ex_480x640" / "image.png"), "q"),
        (None, "no image"),
        (Image.open(DATA / "layouts" / "2000x150" / "image.png"), ["q", "a"]),
        (Image.open(DATA / "ex_100x300" / "image.png"), "q"),
    ]
    floats = [as_float(image, text) for image, text in inputs]
    uint8s = [as_uint8(image, text) for image, text in inputs]
    for f, u in zip(floats, uint8s, strict=True):
        assert u["images"].dtype == np.uint8 and u["images"].shape == f["images"].shape
        for key in f.keys() - {"images"}:
            np.testing.assert_array_equal(u[key], f[key])

    expected = collate(floats)
    transported = collate(uint8s)
    assert transported["images"].dtype == torch.uint8
    got = normalize_images(transported, cfg)
    assert got.keys() == expected.keys() and "crop_mask" in transported
    for key in expected.keys() - {"images"}:
        assert torch.equal(got[key], expected[key]), key
    images, ref = got["images"], expected["images"]
    assert images.dtype == torch.float32 and images.shape == ref.shape
    absent = (ref == -1).flatten(2).all(2)
    assert absent.sum() == sum(ref.shape[1] - len(f["images"]) for f in floats) > 0
    assert torch.equal(absent, (images == -1).flatten(2).all(2))
    real = images[~absent]
    # Back to [0, 1] pixel units, channel by channel: |u8 / 255 - x| <= 0.5 / 255.
    std = torch.tensor(cfg.image_std).repeat(196)
    error = ((real - ref[~absent]) * std).abs().max().item()
    assert error <= 0.5 / 255 + 1e-6
    assert error > 0.4 / 255  # rounding really happened (a float path in disguise would be 0)


def test_uint8_collate_pads_with_zero_and_masks_real_crops():
    proc = MolmoProcessor(StubTokenizer(), PreprocessConfig(), pixel_dtype="uint8")
    small = proc(Image.open(DATA / "layouts" / "17x23" / "image.png"), ["q", "a"])  # 2 crops
    big = proc(Image.open(DATA / "layouts" / "337x337" / "image.png"), "question?")  # 5 crops
    text = proc(None, "no image")
    assert text["images"].dtype == np.uint8 and text["images"].shape == (0, 576, 588)
    batch = collate([small, text, big], pad_crops_to=6)
    assert batch["images"].shape == (3, 6, 576, 588) and batch["images"].dtype == torch.uint8
    np.testing.assert_array_equal(batch["images"][2, :5].numpy(), big["images"])
    assert (batch["images"][0, 2:] == 0).all() and (batch["images"][1] == 0).all()
    assert batch["crop_mask"].tolist() == [
        [True, True, False, False, False, False],
        [False] * 6,
        [True] * 5 + [False],
    ]
    assert (batch["image_masks"][0, 2:] == -1).all() and (batch["image_input_idx"][1] == -1).all()
    normalised = normalize_images(batch, PreprocessConfig())
    assert (normalised["images"][1] == -1).all() and (normalised["images"][2, 5] == -1).all()
    assert "crop_mask" not in normalised and "crop_mask" in batch  # the input is left alone

    with pytest.raises(ValueError, match="images mix dtypes"):
        collate([small, MolmoProcessor(StubTokenizer())(None, "float")])
    with pytest.raises(ValueError, match="expects uint8 images, got torch.float32"):
        normalize_images({**normalised, "crop_mask": batch["crop_mask"]}, PreprocessConfig())


def test_collate_refuses_no_examples_and_foreign_keys(processor):
    with pytest.raises(ValueError, match="at least one example"):
        collate([])
    example = processor(None, "q")
    with pytest.raises(ValueError, match="example 0 has keys"):
        collate([{**example, "extra": np.zeros(1)}])
