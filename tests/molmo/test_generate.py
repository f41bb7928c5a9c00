"""Generation: greedy tokens and step logits of the official fixture, left padding, the KV
cache against full reruns, seeded sampling, stop ids and stop strings, and the config checks."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from molmo.generate import GenerationConfig, collate_prompts, generate
from molmo.model.molmo import Molmo
from molmo.model.weights import from_pretrained
from molmo.preprocess.batching import collate
from molmo.preprocess.processor import MolmoProcessor
from pixmo.errors import ConfigError, PixmoError
from tests.molmo.model.test_molmo import EXAMPLES, FIXTURE, _arrays, _batch, _random_model
from tests.molmo.preprocess.stub_tokenizer import StubTokenizer


@pytest.fixture(scope="module")
def official() -> Molmo:
    torch.manual_seed(0)
    return from_pretrained(FIXTURE)


def _marks(ids: list[int]) -> str:
    return "".join(f"<{i}>" for i in ids)


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


def test_generation_accepts_right_padded_training_batches(official: Molmo) -> None:
    processor = MolmoProcessor(StubTokenizer())
    examples = [processor(Image.open(FIXTURE / e / "image.png"), "What is in this image?")
                for e in EXAMPLES]
    batch = collate(examples)  # right-padded, as for training
    assert batch["input_ids"][1, -1] == -1
    out = generate(official, batch["input_ids"], batch["images"], batch["image_masks"],
                   batch["image_input_idx"], config=GenerationConfig(max_new_tokens=8))
    assert out.tokens == [np.load(FIXTURE / e / "greedy_tokens.npy").tolist() for e in EXAMPLES]


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


def test_greedy_stops_at_a_stop_id_or_string_on_a_tiny_random_model() -> None:
    model = _random_model("tiny")
    prompt = torch.tensor([[500, 3, 17, 250]])
    free = generate(model, prompt, config=GenerationConfig(max_new_tokens=6))
    tokens = free.tokens[0]
    assert len(tokens) == 6 and free.finish_reasons == ["length"]
    k = next(i for i in range(1, 6) if tokens[i] not in tokens[:i])  # first new token id
    stopped = generate(model, prompt, config=GenerationConfig(max_new_tokens=6,
                                                              stop_token_ids=(tokens[k],)))
    assert stopped.tokens == [tokens[:k]] and stopped.finish_reasons == ["stop_token"]
    by_string = generate(model, prompt, decode=_marks, config=GenerationConfig(
        max_new_tokens=6, stop_strings=(f"<{tokens[k]}>",)))
    assert by_string.tokens == [tokens[:k + 1]]  # the stop string stays in the output
    assert by_string.finish_reasons == ["stop_string"]


def test_collate_prompts_left_pads_and_shifts_the_image_positions() -> None:
    short, long = _arrays("ex_100x300"), _arrays("ex_480x640")
    batch = collate_prompts([long, short])
    pad = len(long["input_ids"]) - len(short["input_ids"])
    assert batch["input_ids"].shape == (2, len(long["input_ids"]))
    assert (batch["input_ids"][1, :pad] == -1).all()
    assert torch.equal(batch["input_ids"][1, pad:], torch.from_numpy(short["input_ids"]))
    real = short["image_input_idx"] >= 0
    shifted = batch["image_input_idx"][1, :len(short["image_input_idx"])].numpy()
    np.testing.assert_array_equal(shifted[real], short["image_input_idx"][real] + pad)
    extra = len(long["images"]) - len(short["images"])
    assert extra > 0 and (batch["images"][1, -extra:] == -1).all()
    assert (batch["image_input_idx"][1, -extra:] == -100).all()


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"max_new_tokens": 0}, "GenerationConfig.max_new_tokens must be >= 1, got 0"),
    ({"temperature": float("nan")}, "GenerationConfig.temperature must be >= 0, got nan"),
    ({"top_k": -1}, "GenerationConfig.top_k must be >= 0, got -1"),
    ({"top_p": 0.0}, "GenerationConfig.top_p must be in (0, 1], got 0.0"),
    ({"top_p": 1.5}, "GenerationConfig.top_p must be in (0, 1], got 1.5"),
])
def test_config_checks_name_the_field(kwargs, message) -> None:
    with pytest.raises(ConfigError) as info:
        GenerationConfig(**kwargs)
    assert str(info.value) == message
