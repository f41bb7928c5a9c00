"""The whole Molmo model against the official code (tests/data/molmo_official_tiny): logits,
image features added at ``image_input_idx``, dense and packed attention, the token loss."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from molmo.generate import GenerationConfig, generate
from molmo.model.config import preset
from molmo.model.molmo import Molmo, token_loss
from molmo.model.weights import from_pretrained
from molmo.preprocess.batching import collate
from molmo.preprocess.chat import Conversation
from molmo.preprocess.processor import MolmoProcessor
from tests.molmo.preprocess.stub_tokenizer import StubTokenizer
from tests.paths import OFFICIAL_TINY

FIXTURE = OFFICIAL_TINY
EXAMPLES = ["ex_480x640", "ex_100x300"]
INPUTS = ["input_ids", "images", "image_masks", "image_input_idx"]


def _arrays(example: str) -> dict[str, np.ndarray]:
    return {k: np.load(FIXTURE / example / f"{k}.npy") for k in INPUTS}


def _batch(example: str) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v)[None] for k, v in _arrays(example).items()}


@pytest.fixture(scope="module")
def official() -> Molmo:
    torch.manual_seed(0)
    return from_pretrained(FIXTURE)


@pytest.mark.parametrize("example", EXAMPLES)
def test_forward_matches_official_logits_and_image_features(official: Molmo, example: str) -> None:
    batch = _batch(example)
    with torch.no_grad():
        logits = official(**batch)[0].numpy()
        features = official.image_features(batch["images"], batch["image_masks"])[0].numpy()
    # Measured: logits <= 8.5e-6, image features <= 3.8e-5 (values ~10); the ViT: test_vision.
    np.testing.assert_allclose(logits, np.load(FIXTURE / example / "logits.npy"),
                               atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(features, np.load(FIXTURE / example / "image_features.npy"),
                               atol=2e-4, rtol=1e-5)


def test_bf16_load_and_generation_stay_close_to_fp32() -> None:
    model = from_pretrained(FIXTURE, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    batch = _batch("ex_100x300")
    with torch.no_grad():
        logits = model(**batch)[0]
    assert logits.dtype == torch.bfloat16
    # Measured 0.078 (logit std ~1): bf16 rounding, not a broken path (those move logits > 1).
    diff = (logits.float().numpy() - np.load(FIXTURE / "ex_100x300" / "logits.npy"))
    assert np.abs(diff).max() < 0.25
    out = generate(model, **batch, config=GenerationConfig(max_new_tokens=2))
    assert out.tokens[0] == [36, 182]


def test_image_features_are_added_at_image_input_idx(official: Molmo) -> None:
    batch = _batch("ex_100x300")
    with torch.no_grad():
        with_images = official(**batch)[0]
        text_only = official(batch["input_ids"])[0]
    first_image_pos = int(batch["image_input_idx"][0][batch["image_input_idx"][0] >= 0].min())
    # Before the first <im_patch> the image cannot matter (causal); after it, it must.
    torch.testing.assert_close(with_images[:first_image_pos], text_only[:first_image_pos])
    assert (with_images[-1] - text_only[-1]).abs().max() > 0.5


@pytest.mark.parametrize("example", EXAMPLES)
def test_end_to_end_from_image_file(official: Molmo, example: str) -> None:
    """Own preprocessing (torch resize, not TensorFlow) feeding the model: same greedy tokens."""
    processor = MolmoProcessor(StubTokenizer())
    arrays = processor(Image.open(FIXTURE / example / "image.png"), "What is in this image?")
    batch = {k: torch.from_numpy(arrays[k])[None] for k in INPUTS}
    with torch.no_grad():
        logits = official(**batch)[0].numpy()
    # Measured 3.4e-5 (480x640) and 4.5e-6 (100x300): pixels differ from TF's by ~6e-5.
    np.testing.assert_allclose(logits, np.load(FIXTURE / example / "logits.npy"), atol=2e-4,
                               rtol=1e-4)
    out = generate(official, **batch, config=GenerationConfig(max_new_tokens=8))
    assert out.tokens[0] == np.load(FIXTURE / example / "greedy_tokens.npy").tolist()


def test_training_batch_from_processor_gives_loss_and_gradients(official: Molmo) -> None:
    processor = MolmoProcessor(StubTokenizer())
    image = Image.open(FIXTURE / "ex_100x300" / "image.png")
    examples = [processor(image, [Conversation(("Describe.", "A red box.")),
                                  Conversation(("Count.", "Two."))]),
                processor(image, ["What is it?", "A box."])]
    batch = collate(examples)
    assert (batch["subsegment_ids"][0] == 1).any()  # two packed conversations
    logits = official(batch["input_ids"], batch["images"], batch["image_masks"],
                      batch["image_input_idx"], position_ids=batch["position_ids"],
                      subsegment_ids=batch["subsegment_ids"])
    loss_sum, count = token_loss(logits, batch["labels"], batch["loss_masks"])
    assert count == int((batch["labels"] != -100).sum()) > 0
    assert torch.isfinite(loss_sum)
    (loss_sum / count).backward()
    assert official.connector.projector.down.weight.grad.abs().sum() > 0
    assert official.vision.blocks[0].attn.wq.weight.grad.abs().sum() > 0
    official.zero_grad(set_to_none=True)


def _random_model(name: str, **llm: object) -> Molmo:
    cfg = preset(name)
    cfg = dataclasses.replace(cfg, llm=dataclasses.replace(cfg.llm, **llm))
    torch.manual_seed(0)
    model = Molmo(cfg).eval()
    with torch.no_grad():  # std 0.02 would make every block a near-identity
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model


@pytest.mark.parametrize("name", ["tiny", "tiny-olmo", "tiny-moe"])
def test_dense_float_mask_equals_fast_causal_path(name: str) -> None:
    fast = _random_model(name)
    dense = _random_model(name, dense_attention_mask=True)
    batch = _batch("ex_100x300")
    with torch.no_grad():
        torch.testing.assert_close(fast(**batch), dense(**batch), atol=1e-5, rtol=1e-5)


def test_subsegments_pack_independent_conversations_after_one_image() -> None:
    model = _random_model("tiny")
    prefix, first, second = [500, 512, 514, 514, 513], [3, 17, 250, 9], [44, 71, 8]
    ids = torch.tensor([prefix + first + second])
    subsegments = torch.tensor([[10000] * 5 + [1] * 4 + [2] * 3])
    positions = torch.tensor([list(range(5)) + list(range(5, 9)) + list(range(5, 8))])
    with torch.no_grad():
        packed = model(ids, subsegment_ids=subsegments, position_ids=positions)[0]
        alone_first = model(torch.tensor([prefix + first]))[0]
        alone_second = model(torch.tensor([prefix + second]))[0]
    torch.testing.assert_close(packed[:9], alone_first, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(packed[9:], alone_second[5:], atol=2e-5, rtol=1e-5)


def test_token_loss_sums_supervised_tokens() -> None:
    logits = torch.tensor([[[0.0, 0.0], [2.0, 0.0], [0.0, 0.0]]])
    labels = torch.tensor([[1, 0, -100]])
    total, count = token_loss(logits, labels)
    expected = np.log(2) + np.log(1 + np.exp(-2.0))
    assert count == 2 and abs(float(total) - expected) < 1e-6


