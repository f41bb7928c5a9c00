"""Model parity against the official Molmo code (tests/data/molmo_official_tiny) and the
behaviour of the attention paths, KV cache, batching, MoE routing and sampling."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from molmo.generate import GenerationConfig, collate_prompts, generate
from molmo.model.config import LLMConfig, VisionConfig, preset
from molmo.model.llm import MoEMLP
from molmo.model.molmo import Molmo, token_loss
from molmo.model.weights import from_pretrained
from molmo.preprocess.batching import collate
from molmo.preprocess.chat import Conversation
from molmo.preprocess.processor import MolmoProcessor
from molmo.preprocess.tokenizer import ImageTokenIds
from pixmo.errors import PixmoError
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
def test_forward_matches_official_logits_and_features(official: Molmo, example: str) -> None:
    batch = _batch(example)
    with torch.no_grad():
        logits = official(**batch)[0].numpy()
        vit = official.vision(batch["images"][0]).numpy()
        features = official.image_features(batch["images"], batch["image_masks"])[0].numpy()
    # Measured: logits <= 8.5e-6, ViT <= 4.8e-6, image features <= 3.8e-5 (values ~10).
    np.testing.assert_allclose(logits, np.load(FIXTURE / example / "logits.npy"),
                               atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(vit, np.load(FIXTURE / example / "vit_features.npy"),
                               atol=2e-5, rtol=1e-5)
    np.testing.assert_allclose(features, np.load(FIXTURE / example / "image_features.npy"),
                               atol=2e-4, rtol=1e-5)


@pytest.mark.parametrize("example", EXAMPLES)
@pytest.mark.parametrize("use_cache", [True, False])
def test_greedy_generation_matches_official(official: Molmo, example: str,
                                            use_cache: bool) -> None:
    out = generate(official, **_batch(example),
                   config=GenerationConfig(max_new_tokens=8, use_cache=use_cache,
                                           return_logits=True))
    assert out.tokens[0] == np.load(FIXTURE / example / "greedy_tokens.npy").tolist()
    assert out.finish_reasons == ["length"]
    np.testing.assert_allclose(out.step_logits[0].numpy(),
                               np.load(FIXTURE / example / "greedy_step_logits.npy"),
                               atol=1e-4, rtol=1e-4)


def test_batched_padded_generation_equals_unbatched(official: Molmo) -> None:
    batch = collate_prompts([_arrays(e) for e in EXAMPLES])
    assert (batch["input_ids"][1] == -1).sum() == 781 - 357  # the short prompt is left-padded
    out = generate(official, **batch,
                   config=GenerationConfig(max_new_tokens=8, return_logits=True))
    for i, example in enumerate(EXAMPLES):
        alone = generate(official, **_batch(example),
                         config=GenerationConfig(max_new_tokens=8, return_logits=True))
        assert out.tokens[i] == alone.tokens[0]
        torch.testing.assert_close(out.step_logits[i], alone.step_logits[0], atol=2e-5,
                                   rtol=1e-5)


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


def test_generation_accepts_right_padded_training_batches(official: Molmo) -> None:
    processor = MolmoProcessor(FixtureTokenizer())
    examples = [processor(Image.open(FIXTURE / e / "image.png"), "What is in this image?")
                for e in EXAMPLES]
    batch = collate(examples)  # right-padded, as for training
    assert batch["input_ids"][1, -1] == -1
    out = generate(official, batch["input_ids"], batch["images"], batch["image_masks"],
                   batch["image_input_idx"], config=GenerationConfig(max_new_tokens=8))
    assert out.tokens == [np.load(FIXTURE / e / "greedy_tokens.npy").tolist() for e in EXAMPLES]


def test_image_features_are_added_at_image_input_idx(official: Molmo) -> None:
    batch = _batch("ex_100x300")
    with torch.no_grad():
        with_images = official(**batch)[0]
        text_only = official(batch["input_ids"])[0]
    first_image_pos = int(batch["image_input_idx"][0][batch["image_input_idx"][0] >= 0].min())
    # Before the first <im_patch> the image cannot matter (causal); after it, it must.
    torch.testing.assert_close(with_images[:first_image_pos], text_only[:first_image_pos])
    assert (with_images[-1] - text_only[-1]).abs().max() > 0.5


class FixtureTokenizer:
    """The fixture's stand-in tokenizer: UTF-8 byte b -> (37 b + 11) % 500 (see its README)."""

    bos_id = None
    eos_id = 500
    image_ids = ImageTokenIds(512, 513, 514, 515, 516)

    def encode(self, text: str) -> list[int]:
        return [(37 * b + 11) % 500 for b in text.encode("utf-8")]

    def decode(self, ids: list[int]) -> str:
        inverse = pow(37, -1, 500)
        return bytes(((i - 11) * inverse) % 500 for i in ids).decode("utf-8", "replace")


@pytest.mark.parametrize("example", EXAMPLES)
def test_end_to_end_from_image_file(official: Molmo, example: str) -> None:
    """Own preprocessing (torch resize, not TensorFlow) feeding the model: same greedy tokens."""
    processor = MolmoProcessor(FixtureTokenizer())
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
    processor = MolmoProcessor(FixtureTokenizer())
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


@pytest.mark.parametrize("name", ["tiny-olmo", "tiny-moe"])
def test_cache_and_batching_for_other_families(name: str) -> None:
    model = _random_model(name)
    prompts = [np.array([500, 3, 17, 250, 9, 44, 71], dtype=np.int64),
               np.array([500, 12, 99], dtype=np.int64)]
    batch = collate_prompts([{"input_ids": p} for p in prompts])
    cfg = GenerationConfig(max_new_tokens=6, return_logits=True)
    cached = generate(model, **batch, config=cfg)
    uncached = generate(model, **batch, config=dataclasses.replace(cfg, use_cache=False))
    assert cached.tokens == uncached.tokens
    torch.testing.assert_close(cached.step_logits, uncached.step_logits, atol=1e-4, rtol=1e-4)
    for i, p in enumerate(prompts):
        alone = generate(model, torch.from_numpy(p)[None], config=cfg)
        assert alone.tokens[0] == cached.tokens[i]


def test_plain_causal_cases_pass_no_mask_tensor(monkeypatch: pytest.MonkeyPatch) -> None:
    """SDPA gets is_causal=True and no mask unless padding or packing really needs one."""
    seen: list[tuple[str, bool]] = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, is_causal=False, **kwargs):
        if "enable_gqa" in kwargs:  # the LLM's calls (the ViT and pooling never mask)
            kind = "none" if attn_mask is None else str(attn_mask.dtype).split(".")[-1]
            seen.append((kind, is_causal))
        return sdpa(q, k, v, attn_mask=attn_mask, is_causal=is_causal, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    model, layers = _random_model("tiny"), 2

    def paths(*args: object, **kwargs: object) -> set[tuple[str, bool]]:
        seen.clear()
        with torch.no_grad():
            model(*args, **kwargs)
        assert len(seen) == layers
        return set(seen)

    ids = torch.tensor([[500, 3, 17, 250], [500, 12, -1, -1]])
    assert paths(ids[:1]) == {("none", True)}
    assert paths(ids) == {("none", True)}  # right padding
    assert paths(ids.flip(1)) == {("bool", False)}  # left padding
    one_conversation = torch.tensor([[10000, 10000, 0, 0]])
    assert paths(ids[:1], subsegment_ids=one_conversation) == {("none", True)}
    assert paths(ids[:1], subsegment_ids=torch.tensor([[10000, 0, 1, 1]])) == {("bool", False)}
    cache = model.llm.new_cache(1, 8)
    paths(ids[:1], cache=cache)
    assert paths(torch.tensor([[7]]), cache=cache) == {("none", False)}  # decode step
    model.llm.cfg.dense_attention_mask = True
    assert paths(ids[:1]) == {("float32", False)}


def test_right_padding_keeps_real_token_logits() -> None:
    model = _random_model("tiny")
    ids = torch.tensor([[500, 3, 17, 250, 9, 44]])
    padded = torch.cat([ids, torch.full((1, 3), -1)], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(model(padded)[:, :6], model(ids), atol=2e-5, rtol=1e-5)


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


def test_moe_mlp_matches_per_token_reference() -> None:
    cfg = LLMConfig(d_model=16, layers=1, heads=2, kv_heads=2, mlp_hidden=8, vocab_size=32,
                    embedding_size=32, moe_experts=6, moe_top_k=2, qkv_bias=False)
    torch.manual_seed(0)
    moe = MoEMLP(cfg)
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        got = moe(x)
        probs = torch.softmax(moe.router(x).float(), dim=-1)  # softmax BEFORE top-k
        expected = torch.zeros_like(x)
        for b in range(2):
            for t in range(5):
                weights, chosen = probs[b, t].topk(2)
                for w, e in zip(weights, chosen, strict=True):  # weights not renormalised
                    expected[b, t] += w * moe.experts[int(e)](x[b, t])
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    assert float(probs.topk(2).values.sum(-1).max()) < 1


def test_moe_backward_reaches_every_expert() -> None:
    model = _random_model("tiny-moe")
    logits = model(torch.tensor([[500, 3, 17]]))
    logits.sum().backward()
    grads = [e.gate.weight.grad for e in model.llm.blocks[0].mlp.experts]
    assert all(g is not None for g in grads)  # unused experts get zero, not None (DDP-safe)


def test_sampling_is_seeded_and_top_k_1_is_greedy(official: Molmo) -> None:
    batch = _batch("ex_100x300")
    sampled = [generate(official, **batch,
                        config=GenerationConfig(max_new_tokens=5, temperature=1.0, top_p=0.9),
                        generator=torch.Generator().manual_seed(7)).tokens for _ in range(2)]
    assert sampled[0] == sampled[1]
    top1 = generate(official, **batch,
                    config=GenerationConfig(max_new_tokens=5, temperature=0.7, top_k=1),
                    generator=torch.Generator().manual_seed(1))
    assert top1.tokens[0] == np.load(FIXTURE / "ex_100x300" / "greedy_tokens.npy")[:5].tolist()


def test_stop_token_and_stop_string(official: Molmo) -> None:
    batch = _batch("ex_100x300")  # greedy: 36 182 511 137 293 85 504 271
    out = generate(official, **batch,
                   config=GenerationConfig(max_new_tokens=8, stop_token_ids=(137,)))
    assert out.tokens == [[36, 182, 511]] and out.finish_reasons == ["stop_token"]
    out = generate(official, **batch,
                   config=GenerationConfig(max_new_tokens=8, stop_strings=("<293>",)),
                   decode=lambda ids: "".join(f"<{i}>" for i in ids))
    assert out.tokens == [[36, 182, 511, 137, 293]]
    assert out.finish_reasons == ["stop_string"]
    with pytest.raises(PixmoError, match="stop_strings"):
        generate(official, **batch, config=GenerationConfig(stop_strings=("x",)))


def test_token_loss_sums_supervised_tokens() -> None:
    logits = torch.tensor([[[0.0, 0.0], [2.0, 0.0], [0.0, 0.0]]])
    labels = torch.tensor([[1, 0, -100]])
    total, count = token_loss(logits, labels)
    expected = np.log(2) + np.log(1 + np.exp(-2.0))
    assert count == 2 and abs(float(total) - expected) < 1e-6


def test_config_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match="field kv_heads"):
        LLMConfig(heads=28, kv_heads=5)
    with pytest.raises(ValueError, match="field feature_layers"):
        VisionConfig(layers=4)
    with pytest.raises(ValueError, match="field moe_top_k"):
        LLMConfig(moe_experts=4, moe_top_k=5)
    with pytest.raises(ValueError, match="field preset"):
        preset("molmo-13b")
