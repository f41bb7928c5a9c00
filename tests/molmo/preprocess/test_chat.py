"""Molmo chat text format: role wrapping, spaces, style tags, length hints, targets."""

from __future__ import annotations

import numpy as np
import pytest

from molmo.preprocess.chat import (
    ChatConfig,
    Conversation,
    as_conversations,
    choose_style_tag,
    format_messages,
    length_hint_prompt,
    tokenize_conversation,
)
from molmo.preprocess.tokenizer import train_bpe_tokenizer
from pixmo.errors import PixmoError
from tests.paths import OFFICIAL_TINY

README = OFFICIAL_TINY / "README.md"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    lines = [line for line in README.read_text("utf-8").splitlines() if line.strip()]
    return train_bpe_tokenizer(lines, tmp_path_factory.mktemp("tok") / "bpe", vocab_size=500)


def test_role_format_spaces_and_style():
    conv = Conversation(("What is the max?", "7", "And the min?", "2"), style="chart_qa")
    assert format_messages(conv, ChatConfig()) == [
        " User: chart_qa: What is the max? Assistant:",
        " 7",
        " User: And the min? Assistant:",
        " 2",
    ]
    no_space = ChatConfig(always_start_with_space=False)
    assert format_messages(Conversation(("Hi",)), no_space) == ["User: Hi Assistant:"]


def test_none_format_is_the_bare_prompt():
    cfg = ChatConfig(message_format="none")
    conv = Conversation(("long_caption 40:", "A dog on grass."))
    assert format_messages(conv, cfg) == [" long_caption 40:", " A dog on grass."]


def test_targets_are_answers_and_eos(tokenizer):
    conv = Conversation(("Where is the cat?", "On the mat.", "Which colour?", "Grey."))
    tok = tokenize_conversation(conv, tokenizer, ChatConfig())
    assert tok.ids.dtype == np.int64 and tok.ids.shape == tok.is_target.shape
    assert tokenizer.decode(tok.ids) == (
        " User: Where is the cat? Assistant: On the mat. User: Which colour? Assistant: Grey."
    )
    targets = tok.ids[tok.is_target]
    assert list(targets).count(tokenizer.eos_id) == 2 and targets[-1] == tokenizer.eos_id
    assert tokenizer.decode(targets) == " On the mat. Grey."
    # Messages are encoded one by one: the prompt's tokens are its own encoding.
    first = tokenizer.encode(" User: Where is the cat? Assistant:")
    assert list(tok.ids[: len(first)]) == first and not tok.is_target[: len(first)].any()


def test_style_tag_policy():
    cfg = ChatConfig()
    rng = np.random.default_rng(0)
    draws = [choose_style_tag("pointing", rng, cfg) for _ in range(4000)]
    tagged = sum(d == "pointing" for d in draws) / len(draws)
    assert set(draws) == {None, "pointing"} and 0.08 < tagged < 0.12
    assert all(choose_style_tag("chart_qa", rng, cfg) == "chart_qa" for _ in range(50))
    assert all(choose_style_tag("android_control", rng, cfg) is None for _ in range(50))
    assert choose_style_tag(None, rng, cfg) is None


def test_length_hint():
    cfg = ChatConfig()
    assert length_hint_prompt("long_caption", None, cfg) == "long_caption 65:"
    rng = np.random.default_rng(1)
    target = "x" * 600
    prompts = [length_hint_prompt("long_caption", target, cfg, rng) for _ in range(4000)]
    dropped = [p for p in prompts if p == "long_caption :"]
    assert 0.08 < len(dropped) / len(prompts) < 0.12
    hints = np.array([int(p.split()[1][:-1]) for p in prompts if p not in dropped])
    # (600 + integer noise) // 15 averages 600/15 - 7/15 (floor over 15 residues); sd 25/15.
    assert abs(hints.mean() - (40 - 7 / 15)) < 0.15 and 1.4 < hints.std() < 2.0
    short = [length_hint_prompt("transcript", "", cfg, rng) for _ in range(400)]
    counts = [int(p.split()[1][:-1]) for p in short if p != "transcript :"]
    assert min(counts) == 0 and max(counts) <= 6  # negative noisy lengths clamp to 0
    assert counts.count(0) > 0.6 * len(counts)  # noise < 15 chars: P(N=0) ~ 0.73


def test_as_conversations_forms():
    assert as_conversations("Hi") == [Conversation(("Hi",))]
    assert as_conversations(["Q", "A"], style="vqa2") == [Conversation(("Q", "A"), "vqa2")]
    convs = [Conversation(("a",)), Conversation(("b", "c"))]
    assert as_conversations(convs) == convs
    with pytest.raises(PixmoError, match="inside each Conversation"):
        as_conversations(convs, style="vqa2")
    with pytest.raises(PixmoError, match="at least one user message"):
        Conversation(())
    with pytest.raises(PixmoError, match="message 1 must be a string"):
        Conversation(("q", 3))
    with pytest.raises(ValueError, match="message_format"):
        ChatConfig(message_format="chatml")
