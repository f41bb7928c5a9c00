"""Molmo's chat text format: role wrapping, style tags, caption length hints, loss targets.

A conversation is a list of messages that alternate user, assistant, user, ... . In the "role"
format each user message becomes ``"User: {text} Assistant:"``; every message gets a leading
space (the official ``always_start_with_space``), and every assistant message is followed by EOS.
Assistant tokens and their EOS carry the loss, user tokens do not. Each message is tokenized on
its own, as the official code does, so BPE merges never cross a message boundary.

Style tags (``"chart_qa: ..."``) and caption length hints (``"long_caption 73:"``) are chosen by
the data pipeline with an explicit ``numpy.random.Generator``: nothing here holds state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from molmo.preprocess.tokenizer import TextTokenizer
from pixmo.config import at_least, between, check_fields, one_of
from pixmo.errors import PixmoError

MESSAGE_FORMATS = ("role", "none")


@dataclass(frozen=True)
class ChatConfig:
    """How messages become text. Defaults are those of the released models.

    ``message_format``: "role" (fine-tuned models: "User: ... Assistant:") or "none" (caption
    pre-training: the user turn is only the prompt, e.g. " long_caption 73:").
    ``demo_styles`` get their tag only ``demo_tag_prob`` of the time (so the demo model answers
    untagged prompts); ``untagged_styles`` never get one.
    Length hint: N = (len(target) + int(normal(0, length_hint_std))) // length_hint_divisor,
    dropped with ``length_hint_drop_prob``; inference uses ``inference_length_hint``.
    """

    message_format: str = "role"
    always_start_with_space: bool = True
    demo_styles: tuple[str, ...] = ("point_count", "pointing", "user_qa", "long_caption")
    untagged_styles: tuple[str, ...] = ("android_control", "demo")
    demo_tag_prob: float = 0.1
    length_hint_std: float = 25.0
    length_hint_divisor: int = 15
    length_hint_drop_prob: float = 0.1
    inference_length_hint: int = 65

    def __post_init__(self) -> None:
        check_fields(self, message_format=one_of(MESSAGE_FORMATS), demo_tag_prob=between(0, 1),
                     length_hint_drop_prob=between(0, 1), length_hint_divisor=at_least(1))


@dataclass(frozen=True)
class Conversation:
    """Messages alternating user, assistant, user, ...; an odd count ends with a prompt to answer.

    ``style`` is the tag put before the first user message ("chart_qa: What ..."), or None.
    """

    messages: tuple[str, ...]
    style: str | None = None

    def __post_init__(self) -> None:
        if not self.messages:
            raise PixmoError("a conversation needs at least one user message", field="messages")
        for i, message in enumerate(self.messages):
            if not isinstance(message, str):
                raise PixmoError(
                    f"message {i} must be a string, got {type(message).__name__}",
                    field="messages",
                )


@dataclass(frozen=True)
class TokenizedConversation:
    """Token ids of one conversation and, per token, whether it is a training target."""

    ids: np.ndarray  # [T] int64
    is_target: np.ndarray  # [T] bool


def choose_style_tag(style: str | None, rng: np.random.Generator, cfg: ChatConfig) -> str | None:
    """The tag to show for ``style`` in one training example (demo styles: rarely)."""
    if style is None or style in cfg.untagged_styles:
        return None
    if style in cfg.demo_styles:
        return style if rng.random() < cfg.demo_tag_prob else None
    return style


def length_hint_prompt(
    style: str, target: str | None, cfg: ChatConfig, rng: np.random.Generator | None = None
) -> str:
    """Pre-training prompt with a noisy length hint: "long_caption 73:", or "long_caption :".

    ``target`` None (or no ``rng``) means inference: the fixed ``inference_length_hint``.
    Negative noisy lengths are clamped to 0.
    """
    if target is None or rng is None:
        return f"{style} {cfg.inference_length_hint}:"
    n = len(target) + int(rng.normal(scale=cfg.length_hint_std))
    if rng.random() < cfg.length_hint_drop_prob:
        return f"{style} :"
    return f"{style} {max(n, 0) // cfg.length_hint_divisor}:"


def format_messages(conversation: Conversation, cfg: ChatConfig) -> list[str]:
    """The text of each message as it is tokenized (leading spaces, role wrapping, style tag)."""
    texts = []
    for i, message in enumerate(conversation.messages):
        if i % 2 == 0:
            if i == 0 and conversation.style is not None:
                message = f"{conversation.style}: {message}"
            if cfg.message_format == "role":
                message = f"User: {message} Assistant:"
        if i > 0 or cfg.always_start_with_space:
            message = " " + message
        texts.append(message)
    return texts


def tokenize_conversation(
    conversation: Conversation, tokenizer: TextTokenizer, cfg: ChatConfig
) -> TokenizedConversation:
    """Encode each message separately; assistant messages get EOS and are the targets."""
    reserved = set(tokenizer.image_ids.as_tuple())
    ids: list[int] = []
    is_target: list[bool] = []
    for i, text in enumerate(format_messages(conversation, cfg)):
        message_ids = tokenizer.encode(text)
        bad = reserved.intersection(message_ids)
        if bad:
            raise PixmoError(
                f"message {i} encodes to reserved image token ids {sorted(bad)}; image tokens "
                "are placed by the preprocessor, not written in text",
                field="messages",
            )
        answer = i % 2 == 1
        if answer:
            message_ids = [*message_ids, tokenizer.eos_id]
        ids.extend(message_ids)
        is_target.extend([answer] * len(message_ids))
    return TokenizedConversation(np.asarray(ids, np.int64), np.asarray(is_target, bool))


def as_conversations(
    text: str | Sequence[str] | Sequence[Conversation], style: str | None = None
) -> list[Conversation]:
    """Normalise the processor's text argument: a prompt, a list of turns, or conversations."""
    if isinstance(text, str):
        return [Conversation((text,), style)]
    items = list(text)
    if items and all(isinstance(c, Conversation) for c in items):
        if style is not None:
            raise PixmoError(
                "give the style inside each Conversation, not as an argument", field="style"
            )
        return items
    if items and all(isinstance(m, str) for m in items):
        return [Conversation(tuple(items), style)]
    raise PixmoError(
        "text must be a string, a list of message strings or a list of Conversation",
        field="text",
    )
