"""``pixmo.llm``: a tiny random Qwen2 causal LM, made and saved here with a word-level
tokenizer and a chat template, run in-process (``hf:DIR``): wiring, batching, greedy
determinism and the directory hash in its name; and the request-keyed reply cache.
The model's text is gibberish; what is checked is that it is the same text every way."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from pixmo.captions import CaptionConfig, CaptionLLMConfig, CaptionWriter
from pixmo.errors import PixmoError
from pixmo.llm import (
    LocalModel,
    ReplyCache,
    answer,
    directory_sha256,
    local_tokenizer,
    request,
)

WORDS = ("a red car blue bus kitchen table dog cat sits on the road image shows two of "
         "and with in transcript caption write one detailed user assistant system").split()
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> "
                 "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")


def make_tiny_lm(directory: Path, seed: int = 0) -> Path:
    """A 2-layer Qwen2 with random weights and a word-level tokenizer with a chat template."""
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    special = ["<pad>", "<unk>", "<|end|>", "<|user|>", "<|assistant|>", "<|system|>"]
    vocab = {w: i for i, w in enumerate([*special, *dict.fromkeys(WORDS)])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.WordPiece()  # words joined by spaces
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="<unk>", pad_token="<pad>", eos_token="<|end|>",
        additional_special_tokens=special[3:])
    tokenizer.chat_template = CHAT_TEMPLATE
    config = transformers.Qwen2Config(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        eos_token_id=vocab["<|end|>"], pad_token_id=vocab["<pad>"],
        initializer_range=0.5)  # large random weights: continuations that depend on the prompt
    torch.manual_seed(seed)
    transformers.Qwen2ForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory) -> Path:
    return make_tiny_lm(tmp_path_factory.mktemp("models") / "tiny-qwen")


@pytest.fixture(scope="module")
def model(tiny_lm) -> LocalModel:
    return LocalModel(str(tiny_lm), batch_size=3, device="cpu")


def _requests(name: str, n: int) -> list[dict]:
    prompts = [" ".join(WORDS[i:i + 3 + i % 4]) for i in range(n)]  # lengths differ: padding
    return [request(name, p, "write one detailed caption", 0.0, 12) for p in prompts]


def test_batched_answers_equal_one_at_a_time_and_repeat(model):
    requests = _requests(model.name, 7)
    batched = model.answer(requests)
    single = [model.answer([r])[0] for r in requests]
    assert batched == single == model.answer(requests)
    assert all(isinstance(t, str) and t for t in batched)
    assert len(set(batched)) > 1  # different prompts, different continuations


def test_generate_is_batched(model, monkeypatch):
    seen = []
    generate = model.generate

    def spy(prompts, max_new_tokens):
        seen.append(len(prompts))
        return generate(prompts, max_new_tokens)

    monkeypatch.setattr(model, "generate", spy)
    model.answer(_requests(model.name, 7))
    assert seen == [3, 3, 1]


def test_a_prompt_the_model_cannot_take_fails_alone(tiny_lm, tmp_path):
    """A GPT-2 of 24 positions: the long prompt's generation fails (an IndexError in its
    position embeddings), the short ones in its batch are still answered, as alone."""
    import torch
    import transformers

    directory = tmp_path / "tiny-gpt2"
    directory.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (tiny_lm / name).exists():
            shutil.copy(tiny_lm / name, directory / name)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_lm)
    config = transformers.GPT2Config(
        vocab_size=len(tokenizer), n_positions=24, n_embd=16, n_layer=1, n_head=2,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(config).save_pretrained(directory)
    model = LocalModel(str(directory), batch_size=3, device="cpu")
    short = [request(model.name, p, None, 0.0, 4) for p in ("red car", "blue bus")]
    long = request(model.name, " ".join(WORDS), None, 0.0, 4)
    replies = model.answer([short[0], long, short[1]])  # one batch of three
    assert replies[::2] == [model.answer([r])[0] for r in short]
    assert all(isinstance(r, str) and r for r in replies[::2])
    assert isinstance(replies[1], PixmoError)
    assert replies[1].reason.startswith("generation failed: index out of range")


def test_the_name_hashes_the_directory(tiny_lm, tmp_path, model):
    assert model.name == f"hf:tiny-qwen@{directory_sha256(tiny_lm)[:16]}"
    copy = shutil.copytree(tiny_lm, tmp_path / "tiny-qwen")
    assert directory_sha256(copy) == directory_sha256(tiny_lm)
    other = make_tiny_lm(tmp_path / "other" / "tiny-qwen", seed=1)  # same name, new weights
    assert directory_sha256(other) != directory_sha256(tiny_lm)


def test_a_missing_directory_or_template_is_one_line(tmp_path, tiny_lm):
    with pytest.raises(ValueError, match="none: no such model directory"):
        LocalModel(str(tmp_path / "none"))
    bare = shutil.copytree(tiny_lm, tmp_path / "bare")
    config = json.loads((bare / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (bare / "tokenizer_config.json").write_text(json.dumps(config))
    (bare / "chat_template.jinja").unlink(missing_ok=True)
    with pytest.raises(ValueError, match="the tokenizer has no chat template"):
        LocalModel(str(bare))


def test_captions_from_a_local_model_record_their_provenance(tiny_lm, tmp_path):
    llm = CaptionLLMConfig(base_url=f"hf:{tiny_lm}", max_tokens=8, device="cpu",
                           cache_dir=str(tmp_path / "cache"))
    writer = CaptionWriter(CaptionConfig(method="llm", llm=llm, concurrency=4))
    images = [[{"text": "a red car", "session_id": "s-1"}],
              [{"text": "a dog"}, {"text": "a cat on the table"}]]
    first = [c.to_record() for c in writer.many(images)]
    assert [r["model"] for r in first] == [writer.model.name] * 2
    assert [r["prompt"][:6] for r in first] == ["clean:", "merge:"]
    assert first[0]["sampling"] == {"temperature": 0.0, "max_tokens": 8}
    calls = []
    writer.model.answer = lambda requests: calls.append(requests) or []
    assert [c.to_record() for c in writer.many(images)] == first  # from the cache
    assert calls == [[]]


def test_the_cache_answers_what_it_has_and_keeps_no_failures(tmp_path):
    class Model:
        name = "m"

        def __init__(self) -> None:
            self.asked: list[dict] = []

        def answer(self, requests):
            self.asked += requests
            return [ValueError("down") if "fail" in r["messages"][0]["content"]
                    else r["messages"][0]["content"].upper() for r in requests]

    model, cache = Model(), ReplyCache(str(tmp_path / "cache"))
    requests = [request("m", p, None, 0.0, 5) for p in ("red", "fail", "blue")]
    first = answer(model, cache, requests)
    assert first[0] == "RED" and first[2] == "BLUE" and isinstance(first[1], ValueError)
    assert len(model.asked) == 3
    assert answer(model, cache, requests)[::2] == ["RED", "BLUE"]
    assert len(model.asked) == 4  # only the failure is asked again
    assert len(list((tmp_path / "cache").glob("*/*.json"))) == 2
    assert answer(model, ReplyCache(None), requests[:1]) == ["RED"]


def test_an_empty_reply_is_not_cached(tmp_path):
    """An empty reply is a caption failure ("caption is empty"), so it is asked again."""
    class Model:
        name = "m"

        def __init__(self) -> None:
            self.replies = ["  ", "a caption"]

        def answer(self, requests):
            return [self.replies.pop(0) for _ in requests]

    model, cache = Model(), ReplyCache(str(tmp_path / "cache"))
    (body,) = [request("m", "red", None, 0.0, 5)]
    assert answer(model, cache, [body]) == ["  "]
    assert not list((tmp_path / "cache").glob("*/*.json"))
    assert answer(model, cache, [body]) == ["a caption"]
    assert answer(model, cache, [body]) == ["a caption"]  # from the cache: nothing left
    assert model.replies == []


@pytest.mark.parametrize("damaged", [b"", b"{not json", b'{"content": null}', b"[1]"])
def test_a_damaged_cache_entry_is_asked_again(tmp_path, damaged):
    class Model:
        name = "m"
        asked = 0

        def answer(self, requests):
            self.asked += len(requests)
            return ["a caption"] * len(requests)

    model, cache = Model(), ReplyCache(str(tmp_path / "cache"))
    body = request("m", "red", None, 0.0, 5)
    assert answer(model, cache, [body]) == ["a caption"]
    (entry,) = (tmp_path / "cache").glob("*/*.json")
    entry.write_bytes(damaged)
    assert answer(model, cache, [body]) == ["a caption"] and model.asked == 2
    assert json.loads(entry.read_bytes())["content"] == "a caption"  # written again
    assert answer(model, cache, [body]) == ["a caption"] and model.asked == 2


def test_without_transformers_a_local_model_is_one_line(tiny_lm, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import fails
    with pytest.raises(ValueError, match="field captions.llm.base_url: hf: models need "
                       "transformers and torch"):
        local_tokenizer(str(tiny_lm))
