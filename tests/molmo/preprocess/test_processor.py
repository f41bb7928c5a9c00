"""Molmo preprocessing against arrays computed by the official HF processor, plus layout tests.

Fixture: tests/data/molmo_official_tiny (see its README). Text ids come from the fixture's stub
tokenizer: each UTF-8 byte b -> (37*b + 11) % 500, special ids from special_tokens.json.
"""

from __future__ import annotations

import json
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from molmo.preprocess.chat import ChatConfig, Conversation
from molmo.preprocess.processor import (
    PREFIX_SUBSEGMENT,
    MolmoProcessor,
    PreprocessConfig,
    collate,
    normalize_images,
    preprocess_image,
    select_tiling,
)
from molmo.preprocess.tokenizer import ImageTokenIds, TextTokenizer
from pixmo.errors import PixmoError
from tests.paths import OFFICIAL_TINY

DATA = OFFICIAL_TINY
SPECIAL = json.loads((DATA / "special_tokens.json").read_text())
FULL = ["ex_480x640", "ex_100x300"]
LAYOUTS = sorted(p.name for p in (DATA / "layouts").iterdir())


class StubTokenizer:
    """The fixture's stand-in tokenizer (bytes -> (37 b + 11) mod 500), invertible."""

    bos_id = None
    eos_id = SPECIAL["eos_id"]
    image_ids = ImageTokenIds(
        SPECIAL["im_start"],
        SPECIAL["im_end"],
        SPECIAL["im_patch"],
        SPECIAL["im_col"],
        SPECIAL["image_prompt"],
    )

    def encode(self, text: str) -> list[int]:
        return [(37 * b + 11) % 500 for b in text.encode("utf-8")]

    def decode(self, ids) -> str:
        inv = pow(37, -1, 500)
        return bytes(((i - 11) * inv) % 500 for i in ids if i != self.eos_id).decode("utf-8")


def enc(text: str) -> list[int]:
    return StubTokenizer().encode(text)


@pytest.fixture(scope="module")
def processor() -> MolmoProcessor:
    return MolmoProcessor(StubTokenizer(), PreprocessConfig())


def _load(case_dir: Path, name: str) -> np.ndarray:
    return np.load(case_dir / f"{name}.npy")


def _case_dir(case: str) -> Path:
    return DATA / case if case in FULL else DATA / "layouts" / case


def test_stub_satisfies_protocol():
    assert isinstance(StubTokenizer(), TextTokenizer)


@pytest.mark.parametrize("case", FULL + LAYOUTS)
def test_matches_official_processor(processor, case):
    d = _case_dir(case)
    out = processor(Image.open(d / "image.png"), SPECIAL["prompt_text"])
    ids, idx, masks = _load(d, "input_ids"), _load(d, "image_input_idx"), _load(d, "image_masks")

    assert out["input_ids"].dtype == np.int64 and out["image_input_idx"].dtype == np.int32
    np.testing.assert_array_equal(out["input_ids"], ids)
    np.testing.assert_array_equal(out["image_input_idx"], idx)
    assert out["image_masks"].shape == masks.shape
    assert np.abs(out["image_masks"] - masks).max() <= 1e-6

    images = out["images"]
    assert images.dtype == np.float32
    if case in FULL:
        ref = _load(d, "images")
        assert images.shape == ref.shape
        assert np.abs(images - ref).max() < 1e-4  # measured: 6.4e-5 (480x640), 9.5e-7 (100x300)
        np.testing.assert_array_equal(
            out["input_ids"][-len(_load(d, "text_ids")) :], _load(d, "text_ids")
        )
    else:
        flat = images.reshape(len(images), -1)
        stats = np.stack(
            [
                flat.astype(np.float64).sum(1) / flat.shape[1],
                flat.mean(1),
                flat.std(1),
                flat.min(1),
                flat.max(1),
            ],
            axis=1,
        )
        ref = _load(d, "images_crop_stats")
        ref[:, 0] /= flat.shape[1]  # the official sum was taken in float32: compare per element
        assert np.abs(stats - ref).max() < 1e-4
        sub = _load(d, "images_subsample")
        assert images[:, ::37, ::29].shape == sub.shape
        assert np.abs(images[:, ::37, ::29] - sub).max() < 1e-4  # measured max 3.0e-5


def test_text_after_image_is_role_format(processor):
    """The official text ids are the stub encoding of ' User: {prompt} Assistant:'."""
    text_ids = _load(DATA / "ex_480x640", "text_ids")
    assert list(text_ids) == enc(" User: What is in this image? Assistant:")
    assert StubTokenizer().decode(text_ids) == " User: What is in this image? Assistant:"


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


def test_layout_counts(processor):
    """Token blocks: 2x3 tiling -> global 158 tokens + hi-res 20 rows of (28 patches + col) + 2."""
    out = processor(Image.open(DATA / "ex_480x640" / "image.png"), "hi")
    ids = out["input_ids"]
    im = StubTokenizer.image_ids
    assert (ids == im.im_patch).sum() == 144 + 20 * 28
    assert (ids == im.im_col).sum() == 12 + 20
    assert (ids == im.im_start).sum() == 2 and (ids == im.im_end).sum() == 2
    valid = out["image_input_idx"][out["image_input_idx"] >= 0]
    assert len(np.unique(valid)) == len(valid) == (ids == im.im_patch).sum()
    assert (ids[valid] == im.im_patch).all()
    assert (out["labels"] == -100).all() and (out["loss_masks"] == 0).all()


def test_no_image_prepends_bos_only(processor):
    out = processor(None, "Hello")
    np.testing.assert_array_equal(out["input_ids"], [500, *enc(" User: Hello Assistant:")])
    assert out["images"].shape == (0, 576, 588)
    assert out["image_masks"].shape == (0, 576) and out["image_input_idx"].shape == (0, 144)


def test_turns_labels_and_loss_masks(processor):
    out = processor(None, ["Q1", "A1", "Q2", "A2"])
    eos = StubTokenizer.eos_id
    q1, a1 = enc(" User: Q1 Assistant:"), enc(" A1")
    q2, a2 = enc(" User: Q2 Assistant:"), enc(" A2")
    expected = [500, *q1, *a1, eos, *q2, *a2, eos]
    np.testing.assert_array_equal(out["input_ids"], expected)
    labels = np.full(len(expected), -100)
    start = 1 + len(q1)
    labels[start - 1 : start + len(a1)] = [*a1, eos]
    start2 = start + len(a1) + 1 + len(q2)
    labels[start2 - 1 : start2 + len(a2)] = [*a2, eos]
    np.testing.assert_array_equal(out["labels"], labels)
    np.testing.assert_array_equal(out["loss_masks"], (labels >= 0).astype(np.float32))
    np.testing.assert_array_equal(out["position_ids"], np.arange(len(expected)))
    assert (out["subsegment_ids"][1:] == 0).all() and out["subsegment_ids"][0] == PREFIX_SUBSEGMENT


def test_style_tag_in_first_user_message(processor):
    out = processor(None, ["What is the max?", "7", "And the min?"], style="chart_qa")
    text = StubTokenizer().decode(out["input_ids"][1:])
    assert text == " User: chart_qa: What is the max? Assistant: 7 User: And the min? Assistant:"


def test_several_conversations_share_the_image_prefix():
    cfg = PreprocessConfig(conversation_weighting="root_subsegments")
    proc = MolmoProcessor(StubTokenizer(), cfg)
    image = Image.open(DATA / "layouts" / "336x336" / "image.png")
    convs = [
        Conversation(("Point to the cat", "here")),
        Conversation(("Count cats", "2"), "pixmo"),
        Conversation(("Caption", "A cat.")),
    ]
    out = proc(image, convs, weight=2.0)
    n_prefix = 1 + 316
    lengths = [
        len(enc(" User: Point to the cat Assistant:")) + len(enc(" here")) + 1,
        len(enc(" User: pixmo: Count cats Assistant:")) + len(enc(" 2")) + 1,
        len(enc(" User: Caption Assistant:")) + len(enc(" A cat.")) + 1,
    ]
    assert len(out["input_ids"]) == n_prefix + sum(lengths)
    expected_sub = np.concatenate(
        [np.full(n_prefix, PREFIX_SUBSEGMENT)] + [np.full(n, k) for k, n in enumerate(lengths)]
    )
    np.testing.assert_array_equal(out["subsegment_ids"], expected_sub)
    expected_pos = np.concatenate(
        [np.arange(n_prefix)] + [n_prefix + np.arange(n) for n in lengths]
    )
    np.testing.assert_array_equal(out["position_ids"], expected_pos)
    weights = out["loss_masks"][out["labels"] >= 0]
    np.testing.assert_allclose(weights, 2.0 * np.sqrt(1 / 3), rtol=1e-6)
    assert len(weights) == len(enc(" here") + enc(" 2") + enc(" A cat.")) + 3
    # The image block is the same as for a single conversation.
    single = proc(image, "x")
    np.testing.assert_array_equal(out["input_ids"][:n_prefix], single["input_ids"][:n_prefix])
    np.testing.assert_array_equal(out["image_input_idx"], single["image_input_idx"])


def test_caption_pretraining_format():
    cfg = PreprocessConfig(chat=ChatConfig(message_format="none"))
    out = MolmoProcessor(StubTokenizer(), cfg)(None, ["long_caption 65:", "A red ball."])
    assert StubTokenizer().decode(out["input_ids"][1:]) == " long_caption 65: A red ball."
    assert out["input_ids"][-1] == StubTokenizer.eos_id
    assert StubTokenizer().decode(out["labels"][out["labels"] >= 0]) == " A red ball."


def test_truncation_keeps_image_block():
    cfg = PreprocessConfig(max_sequence_length=330)
    proc = MolmoProcessor(StubTokenizer(), cfg)
    image = Image.open(DATA / "layouts" / "336x336" / "image.png")
    out = proc(image, ["question", "a long answer " * 5])
    assert len(out["input_ids"]) == 330 and len(out["labels"]) == 330
    assert out["labels"][-1] == -100
    with pytest.raises(PixmoError, match="317 tokens, more than max_sequence_length 300"):
        MolmoProcessor(StubTokenizer(), PreprocessConfig(max_sequence_length=300))(image, "q")


def test_reserved_image_tokens_in_text_are_rejected():
    class Leaky(StubTokenizer):
        def encode(self, text):
            return [SPECIAL["im_patch"]] if "<im_patch>" in text else super().encode(text)

    with pytest.raises(PixmoError, match="reserved image token ids"):
        MolmoProcessor(Leaky())(None, "look <im_patch>")


def test_bad_inputs_raise():
    with pytest.raises(PixmoError, match="uint8"):
        MolmoProcessor(StubTokenizer())(np.zeros((4, 4), np.float32), "q")
    with pytest.raises(PixmoError, match="list of Conversation"):
        MolmoProcessor(StubTokenizer())(None, [1, 2])
    with pytest.raises(PixmoError, match="weight must be >= 0"):
        MolmoProcessor(StubTokenizer())(None, "q", weight=-1.0)
    with pytest.raises(ValueError, match="overlap_margins"):
        PreprocessConfig(overlap_margins=(3, 4))
    with pytest.raises(ValueError, match="conversation_weighting"):
        PreprocessConfig(conversation_weighting="sqrt")


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
    with pytest.raises(ValueError, match="pixel_dtype must be one of"):
        MolmoProcessor(StubTokenizer(), pixel_dtype="float16")


def test_processor_pickles_for_dataloader_workers(processor):
    """DataLoader workers (spawn) receive the processor pickled; it must survive unchanged."""
    clone = pickle.loads(pickle.dumps(processor))
    image = Image.open(DATA / "layouts" / "17x23" / "image.png")
    a, b = processor(image, ["q", "a"]), clone(image, ["q", "a"])
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
