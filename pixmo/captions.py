"""Transcripts of one image -> one caption.

PixMo had Claude rewrite the spoken transcripts: with one transcript it
cleaned it up, with several it merged them. Here the default is a
deterministic clean-up (no model, same output every run); the LLM rewrite goes
to any OpenAI-compatible chat-completions endpoint (vLLM, llama.cpp, Ollama,
hosted) or to a local Hugging Face model in this process (``hf:DIR``), through
``pixmo.llm``: both prompts configurable, up to ``concurrency`` requests at once
(prompts per batch, locally), and a cache keyed by the request, so a re-run
sends nothing. Each caption records what made it: method, model, prompt
version and sampling settings, all of which the cache key covers.

This stage only adds a caption: the raw transcripts stay in the sample. So a
caption it cannot write (the endpoint down, every retry timed out) rejects no
input record: the sample keeps its transcripts and records a
``CaptionFailure`` in its ``failures``, which the build counts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from pixmo import llm as models
from pixmo.config import above, at_least, between, check_fields, finite, one_of
from pixmo.errors import ConfigError
from pixmo.fetch import FetchConfig
from pixmo.rejects import Reason
from pixmo.remote import is_http

STAGE = "caption"
METHODS = ("cleanup", "llm")

DEFAULT_FILLERS = (
    "um", "umm", "uh", "uhh", "uhm", "erm", "er", "ah", "hmm", "mm", "mhm", "uh-huh", "mm-hmm",
)
# Fillers made of real words are removed only where they stand alone between commas.
DEFAULT_FILLER_PHRASES = ("you know", "i mean", "like i said")
# A clause that ends on one of these before a restart is a false start.
_DANGLING = ("a", "an", "the", "is", "are", "of", "to", "with", "in", "on", "there's")

CLEAN_PROMPT = (
    "Below is a transcript of a person describing an image aloud. Rewrite it as one "
    "detailed, well-written caption of the image. Remove filler words, false starts and "
    "repetitions, keep every visual detail, and add nothing that the transcript does not "
    "say. Reply with the caption only.\n\nTranscript:\n{transcript}"
)
MERGE_PROMPT = (
    "Below are transcripts of different people describing the same image aloud while "
    "looking at it. Write one detailed caption of the image that combines everything they "
    "describe: what the image shows at first glance, the objects and how many of each, any "
    "text and what it says, where things are, small details, the background, and the style "
    "and colours. State each detail once. Use only what the transcripts say: add no object, "
    "count, colour, text or interpretation that none of them states, and where they "
    "disagree, keep what they agree on or say that it is unclear. Leave out filler words, "
    "false starts and remarks about the task. Reply with the caption only.\n\n{transcripts}"
)


@dataclass(frozen=True)
class CaptionLLMConfig:
    """The language model that rewrites transcripts into captions (not the model that
    ``molmo`` trains): ``base_url`` is an OpenAI-compatible endpoint, ending before
    ``/chat/completions`` (``http://127.0.0.1:8000/v1``), serving ``model``, with the API
    key, if any, in the environment variable ``api_key_env``; or ``hf:DIR``, a
    transformers causal LM in a local directory, run greedily in the build's workers on
    ``device``. ``clean_prompt`` must contain ``{transcript}``, ``merge_prompt``
    ``{transcripts}``. Requests have ``pixmo.fetch``'s limits: ``timeout_s`` per attempt,
    ``retries`` after the first, waiting ``backoff_s`` doubled each time up to
    ``FetchConfig.backoff_cap_s`` (or the server's Retry-After, up to
    ``FetchConfig.retry_after_cap_s``). ``cache_dir``: where replies are kept (a path or
    URL; a build's default is ``OUT/caption_cache``)."""

    base_url: str
    model: str = ""
    api_key_env: str = "PIXMO_CAPTION_API_KEY"
    clean_prompt: str = CLEAN_PROMPT
    merge_prompt: str = MERGE_PROMPT
    system_prompt: str | None = None
    temperature: float = 0.0
    max_tokens: int = 600
    timeout_s: float = 120.0
    retries: int = 3
    backoff_s: float = 2.0
    max_response_bytes: int = 1 << 20
    device: str = "auto"
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        if not (is_http(self.base_url) or self.local):
            raise ConfigError(f"must be http(s) or hf:DIR, got {self.base_url!r}",
                              field="CaptionLLMConfig.base_url")
        if not self.local and urlsplit(self.base_url).password is not None:
            raise ConfigError("must not hold a password (dataset.json records it): put the "
                              f"key in ${self.api_key_env}", field="CaptionLLMConfig.base_url")
        if not self.local and not self.model:
            raise ConfigError("is required for an endpoint (the name of the model it serves)",
                              field="CaptionLLMConfig.model")
        if self.local and self.temperature != 0:
            raise ConfigError(f"must be 0 for an hf: model (greedy), got {self.temperature}",
                              field="CaptionLLMConfig.temperature")
        if "{transcript}" not in self.clean_prompt:
            raise ConfigError("must contain {transcript}", field="CaptionLLMConfig.clean_prompt")
        if "{transcripts}" not in self.merge_prompt:
            raise ConfigError("must contain {transcripts}", field="CaptionLLMConfig.merge_prompt")
        check_fields(self, timeout_s=finite(above(0)), retries=at_least(0),
                     backoff_s=finite(at_least(0)), max_response_bytes=at_least(1),
                     temperature=finite(at_least(0)), max_tokens=at_least(1),
                     device=one_of(("auto", "cpu", "cuda")))

    @property
    def local(self) -> str | None:
        """The model directory of ``hf:DIR``, else None."""
        return self.base_url[len(models.HF):] or None if self.base_url.startswith(models.HF) \
            else None

    @property
    def fetch(self) -> FetchConfig:
        """The limits of one chat request."""
        return FetchConfig(timeout_s=self.timeout_s, max_bytes=self.max_response_bytes,
                           retries=self.retries, backoff_base_s=self.backoff_s)

    def chat_model(self, concurrency: int,
                   sleep: Callable[[float], object] = time.sleep) -> models.ChatModel:
        """The model this config names: ``concurrency`` requests at once (an endpoint)
        or prompts per batch (a local model)."""
        if self.local:
            return models.LocalModel(self.local, concurrency, self.device)
        fetch = dataclasses.replace(self.fetch, per_host_concurrency=concurrency)
        return models.Endpoint(self.base_url, self.model, fetch, concurrency,
                               self.api_key_env, sleep)

    def prompt_version(self, transcripts: int) -> str:
        """The prompt for ``transcripts`` transcripts: ``clean:`` (one) or ``merge:`` and
        12 hex of the system prompt and the template."""
        kind, template = ("clean", self.clean_prompt) if transcripts == 1 else \
            ("merge", self.merge_prompt)
        text = json.dumps([self.system_prompt, template])
        return f"{kind}:{hashlib.sha256(text.encode()).hexdigest()[:12]}"


@dataclass(frozen=True)
class CaptionConfig:
    """``concurrency``: LLM requests in flight at once, or prompts per batch for an
    ``hf:`` model (a setting of speed: captions are the same whatever it is)."""

    method: str = "cleanup"
    llm: CaptionLLMConfig | None = None
    fillers: tuple[str, ...] = DEFAULT_FILLERS
    filler_phrases: tuple[str, ...] = DEFAULT_FILLER_PHRASES
    # sentences sharing at least this fraction of words count as the same sentence
    duplicate_overlap: float = 0.75
    concurrency: int = 8

    def __post_init__(self) -> None:
        check_fields(self, method=one_of(METHODS), concurrency=at_least(1),
                     duplicate_overlap=between(0, 1, open_low=True))
        if self.method == "llm" and self.llm is None:
            raise ConfigError("is required when method is 'llm'", field="CaptionConfig.llm")


@dataclass(frozen=True)
class Caption:
    """An item of ``captions`` in the ``sample`` schema."""

    text: str
    method: str
    model: str | None = None
    session_ids: tuple[str, ...] = ()
    prompt: str | None = None  # ``CaptionLLMConfig.prompt_version``
    sampling: tuple[tuple[str, float], ...] = ()  # (setting, value) pairs

    def to_record(self) -> dict[str, Any]:
        record: dict[str, Any] = {"text": self.text, "method": self.method}
        if self.model is not None:
            record["model"] = self.model
        if self.prompt is not None:
            record["prompt"] = self.prompt
        if self.sampling:
            record["sampling"] = dict(self.sampling)
        if self.session_ids:
            record["session_ids"] = list(self.session_ids)
        return record


@dataclass(frozen=True)
class CaptionFailure:
    """A caption that was not written, with the sessions it would have covered:
    an item of ``failures`` in the ``sample`` schema. Not a ``Reject``, since
    those sessions' transcripts are in the sample and the ledger counts their
    records as accepted."""

    reason: Reason
    detail: str
    session_ids: tuple[str, ...] = ()

    def to_record(self) -> dict[str, Any]:
        record: dict[str, Any] = {"stage": STAGE, "reason": self.reason.value,
                                  "detail": self.detail}
        if self.session_ids:
            record["session_ids"] = list(self.session_ids)
        return record


# ---------------------------------------------------------------- clean-up


def _word_pattern(words: Sequence[str]) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


def clean_transcript(text: str, cfg: CaptionConfig | None = None) -> str:
    """Remove spoken artefacts from one transcript, keeping its words otherwise:
    fillers, stutters ("ki- kitchen"), false starts ("there is a, there are two
    cats"), repeated words and phrases ("it's, it's"), then fix spacing,
    punctuation and capitals."""
    cfg = cfg or CaptionConfig()
    s = " ".join(text.split())
    if cfg.fillers:
        s = re.sub(rf"(?i)(?<![\w'-])(?:{_word_pattern(cfg.fillers)})(?![\w'-])[,.]?", "", s)
    if cfg.filler_phrases:
        phrases = _word_pattern(cfg.filler_phrases)
        s = re.sub(rf"(?i)(^|[,.!?;])\s*(?:{phrases})\s*(?:,|(?=[.!?]|$))", r"\1", s)
        s = re.sub(rf"(?i),\s*(?:{phrases})\s*(?=[.!?;]|$)", "", s)
    s = re.sub(r"(?i)\b([\w']+)-\s+(?=\1)", "", s)  # stutter fragments: "ki- kitchen"
    dangling = _word_pattern(_DANGLING)
    # false start: up to five words ending on a dangling word, then a restart
    # with the same first word
    s = re.sub(
        rf"(?i)\b([\w']+)\b(?:\s+[\w']+){{0,3}}?\s+(?:{dangling})\s*(?:,|\.\.\.|…|--|—)\s*"
        r"(?=\1\b)",
        "",
        s,
    )
    s = re.sub(r"\s*(?:\.\.\.|…|--|—)\s*", ", ", s)
    # repeated words and phrases of up to three words: "the the", "it's, it's"
    s = re.sub(r"(?i)\b((?:[\w']+\s+){0,2}[\w']+)(?:[\s,]+\1\b)+", r"\1", s)
    # "a, photo", "and, a bird" once a filler is gone
    s = re.sub(rf"(?i)\b({dangling}|and|or|but),\s+", r"\1 ", s)
    return _punctuate(s)


def _punctuate(s: str) -> str:
    s = re.sub(r"\s+([,.!?;:])", r"\1", s)
    s = re.sub(r"([,;:])(?:\s*[,;:])+", r"\1", s)  # ", ," -> ","
    s = re.sub(r"[,;:]\s*([.!?])", r"\1", s)  # ", ." -> "."
    s = re.sub(r"([.!?])(?:\s*[.!?,])+", r"\1", s)
    s = re.sub(r"^[\s,.;:!?]+", "", s)
    # a missing space after punctuation; "example.com" and "3.5" stay as they are
    s = re.sub(r"(?<=\w)([,;:])(?=[A-Za-z])|(?<=[a-z])([.!?])(?=[A-Z])", r"\1\2 ", s)
    s = re.sub(r"\bi\b", "I", s)
    s = re.sub(r"\s+", " ", s).strip().rstrip(",;:").rstrip()
    if not s:
        return ""
    s = re.sub(r"(^|[.!?]\s+)([a-z])", lambda m: m.group(1) + m.group(2).upper(), s)
    return s if s[-1] in ".!?" else s + "."


def split_sentences(text: str) -> list[str]:
    return [p for p in re.split(r"(?<=[.!?])\s+", text.strip()) if p]


def _words(sentence: str) -> set[str]:
    return set(re.findall(r"[a-z0-9']+", sentence.lower()))


def merge_transcripts(texts: Sequence[str], cfg: CaptionConfig | None = None) -> str:
    """Clean each transcript and join them in order, leaving out any sentence
    that repeats one already kept (same words, up to ``duplicate_overlap``)."""
    cfg = cfg or CaptionConfig()
    kept: list[str] = []
    seen: list[set[str]] = []
    for text in texts:
        for sentence in split_sentences(clean_transcript(text, cfg)):
            words = _words(sentence)
            if not words:
                continue
            if any(len(words & w) / len(words | w) >= cfg.duplicate_overlap for w in seen):
                continue
            kept.append(sentence)
            seen.append(words)
    return " ".join(kept)


# ---------------------------------------------------------------- LLM rewrite


class CaptionWriter:
    """The caption stage: the transcript records of an image in, one ``Caption`` (or a
    ``CaptionFailure``) out; ``many`` takes many images at once (concurrent requests, or
    a batch for a local model). ``cache_dir`` is where replies are kept unless the
    config names a place."""

    def __init__(self, cfg: CaptionConfig | None = None,
                 sleep: Callable[[float], object] = time.sleep,
                 cache_dir: str | None = None) -> None:
        self.cfg = cfg or CaptionConfig()
        llm = self.cfg.llm
        self.model = llm.chat_model(self.cfg.concurrency, sleep) \
            if self.cfg.method == "llm" and llm is not None else None
        self.cache = models.ReplyCache(llm.cache_dir or cache_dir if llm else None)

    def __call__(self, transcripts: Sequence[Mapping[str, Any]]) -> Caption | CaptionFailure:
        return self.many([transcripts])[0]

    def many(self, images: Sequence[Sequence[Mapping[str, Any]]]
             ) -> list[Caption | CaptionFailure]:
        texts = [[t["text"] for t in ts if t.get("text", "").strip()] for ts in images]
        sessions = [tuple(t["session_id"] for t in ts if t.get("session_id")) for ts in images]
        if self.model is None:
            replies: list[models.Reply] = [merge_transcripts(t, self.cfg) if t else ""
                                           for t in texts]
        else:
            asked = [i for i, t in enumerate(texts) if t]
            answers = models.answer(self.model, self.cache,
                                    [self._request(texts[i]) for i in asked])
            replies = [""] * len(texts)
            for i, reply in zip(asked, answers, strict=True):
                replies[i] = reply
        return [self._caption(t, r, s) for t, r, s in zip(texts, replies, sessions, strict=True)]

    def _caption(self, texts: list[str], reply: models.Reply, session_ids: tuple[str, ...]
                 ) -> Caption | CaptionFailure:
        if not texts:
            return CaptionFailure(Reason.CAPTION_FAILED, "no transcript text", session_ids)
        if not isinstance(reply, str):
            detail = self.model.failure(reply) if isinstance(self.model, models.Endpoint) \
                else reply.reason
            return CaptionFailure(Reason.CAPTION_FAILED, detail, session_ids)
        if not reply.strip():
            return CaptionFailure(Reason.CAPTION_FAILED, "caption is empty", session_ids)
        if self.model is None:
            return Caption(text=reply.strip(), method="cleanup", session_ids=session_ids)
        llm = self.cfg.llm
        return Caption(text=reply.strip(), method="llm", model=self.model.name,
                       session_ids=session_ids, prompt=llm.prompt_version(len(texts)),
                       sampling=(("temperature", llm.temperature),
                                 ("max_tokens", llm.max_tokens)))

    def _request(self, texts: list[str]) -> dict[str, Any]:
        llm = self.cfg.llm
        if len(texts) == 1:
            prompt = llm.clean_prompt.replace("{transcript}", texts[0])
        else:
            joined = "\n\n".join(f"Transcript {i}:\n{t}" for i, t in enumerate(texts, 1))
            prompt = llm.merge_prompt.replace("{transcripts}", joined)
        return models.request(self.model.name, prompt, llm.system_prompt, llm.temperature,
                              llm.max_tokens)
