"""The Molmo processor against arrays computed by the official HF processor, plus token layout
and label tests.

Fixture: tests/data/molmo_official_tiny (see its README). Text ids come from the fixture's stub
tokenizer: each UTF-8 byte b -> (37*b + 11) % 500, special ids from special_tokens.json.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from molmo.preprocess.chat import ChatConfig, Conversation
from molmo.preprocess.config import PreprocessConfig
from molmo.preprocess.processor import PREFIX_SUBSEGMENT, MolmoProcessor
from molmo.preprocess.tokenizer import TextTokenizer
from pixmo.errors import PixmoError
from tests.molmo.preprocess.stub_tokenizer import DATA, SPECIAL, StubTokenizer

FULL = ["ex_480x640", "ex_100x300"]
LAYOUTS = sorted(p.name for p in (DATA / "layouts").iterdir())


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
    with pytest.raises(ValueError, match="pixel_dtype must be one of"):
        MolmoProcessor(StubTokenizer(), pixel_dtype="float16")


def test_processor_pickles_for_dataloader_workers(processor):
    """DataLoader workers (spawn) receive the processor pickled; it must survive unchanged."""
    clone = pickle.loads(pickle.dumps(processor))
    image = Image.open(DATA / "layouts" / "17x23" / "image.png")
    a, b = processor(image, ["q", "a"]), clone(image, ["q", "a"])
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
