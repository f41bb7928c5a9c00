"""Transcripts of one image -> one caption.

PixMo had Claude rewrite the spoken transcripts: with one transcript it
cleaned it up, with several it merged them. Here the default is a
deterministic clean-up (no model, same output every run); the LLM rewrite goes
through any OpenAI-compatible chat-completions endpoint (vLLM, llama.cpp,
hosted), with both prompts configurable, requests bounded and retried by the
toolkit's one HTTP client (``pixmo.fetch``) and an on-disk cache keyed by the
request, so a re-run sends nothing.

This stage only adds a caption: the raw transcripts stay in the sample. So a
caption it cannot write (the endpoint down, every retry timed out) rejects no
input record: the sample keeps its transcripts and records a
``CaptionFailure`` in its ``failures``, which the build counts.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pixmo.atomic import atomic_write_bytes
from pixmo.config import above, at_least, between, check_fields, finite, one_of
from pixmo.errors import ConfigError, PixmoError
from pixmo.fetch import FetchConfig, FetchError, fetch_bytes
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
    "Below are several transcripts of different people describing the same image aloud. "
    "Write one detailed caption of the image, about 200 words, that combines every detail "
    "they mention without repeating anything and without adding details none of them "
    "mention. Reply with the caption only.\n\n{transcripts}"
)


@dataclass(frozen=True)
class CaptionLLMConfig:
    """The OpenAI-compatible chat endpoint that rewrites transcripts into captions
    (not the model that ``molmo`` trains). ``base_url`` ends before
    ``/chat/completions`` (e.g. ``http://127.0.0.1:8000/v1``). ``clean_prompt``
    must contain ``{transcript}``, ``merge_prompt`` ``{transcripts}``. Requests
    have ``pixmo.fetch``'s limits: ``timeout_s`` per attempt, ``retries`` after the
    first, waiting ``backoff_s`` doubled each time up to ``FetchConfig.backoff_cap_s``
    (or the server's Retry-After, up to ``FetchConfig.retry_after_cap_s``)."""

    base_url: str
    model: str
    api_key: str | None = None
    clean_prompt: str = CLEAN_PROMPT
    merge_prompt: str = MERGE_PROMPT
    system_prompt: str | None = None
    temperature: float = 0.0
    max_tokens: int = 600
    timeout_s: float = 120.0
    retries: int = 3
    backoff_s: float = 2.0
    max_response_bytes: int = 1 << 20
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        if not is_http(self.base_url):
            raise ConfigError(f"must be http(s), got {self.base_url!r}",
                              field="CaptionLLMConfig.base_url")
        if "{transcript}" not in self.clean_prompt:
            raise ConfigError("must contain {transcript}", field="CaptionLLMConfig.clean_prompt")
        if "{transcripts}" not in self.merge_prompt:
            raise ConfigError("must contain {transcripts}", field="CaptionLLMConfig.merge_prompt")
        check_fields(self, timeout_s=finite(above(0)), retries=at_least(0),
                     backoff_s=finite(at_least(0)), max_response_bytes=at_least(1))

    @property
    def fetch(self) -> FetchConfig:
        """The limits of one chat request."""
        return FetchConfig(timeout_s=self.timeout_s, max_bytes=self.max_response_bytes,
                           retries=self.retries, backoff_base_s=self.backoff_s)


@dataclass(frozen=True)
class CaptionConfig:
    method: str = "cleanup"
    llm: CaptionLLMConfig | None = None
    fillers: tuple[str, ...] = DEFAULT_FILLERS
    filler_phrases: tuple[str, ...] = DEFAULT_FILLER_PHRASES
    # sentences sharing at least this fraction of words count as the same sentence
    duplicate_overlap: float = 0.75

    def __post_init__(self) -> None:
        check_fields(self, method=one_of(METHODS),
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

    def to_record(self) -> dict[str, Any]:
        record: dict[str, Any] = {"text": self.text, "method": self.method}
        if self.model is not None:
            record["model"] = self.model
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


class LLMClient:
    """Chat completions through ``pixmo.fetch`` (bounded time and response size,
    retries with backoff), with a request-keyed cache."""

    def __init__(self, cfg: CaptionLLMConfig,
                 sleep: Callable[[float], object] = time.sleep) -> None:
        self.cfg = cfg
        self.url = cfg.base_url.rstrip("/") + "/chat/completions"
        self.sleep = sleep

    def _body(self, prompt: str) -> dict[str, Any]:
        messages = [{"role": "user", "content": prompt}]
        if self.cfg.system_prompt:
            messages.insert(0, {"role": "system", "content": self.cfg.system_prompt})
        return {"model": self.cfg.model, "messages": messages,
                "temperature": self.cfg.temperature, "max_tokens": self.cfg.max_tokens}

    def _cache_path(self, body: dict[str, Any]) -> Path | None:
        if self.cfg.cache_dir is None:
            return None
        key = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        return Path(self.cfg.cache_dir) / key[:2] / f"{key}.json"

    def complete(self, prompt: str) -> str:
        """The reply's text. Raises a retryable ``FetchError`` once the retries
        are spent and ``PixmoError`` on a reply no retry can fix (4xx, malformed
        JSON, too large)."""
        body = self._body(prompt)
        cache = self._cache_path(body)
        if cache is not None and cache.is_file():
            return json.loads(cache.read_text(encoding="utf-8"))["content"]
        content = self._post(body)
        if cache is not None:
            entry = {"request": body, "content": content}
            atomic_write_bytes(cache, json.dumps(entry, ensure_ascii=False).encode("utf-8"))
        return content

    def _post(self, body: dict[str, Any]) -> str:
        headers = {"Content-Type": "application/json"}
        if self.cfg.api_key:
            headers["Authorization"] = f"Bearer {self.cfg.api_key}"
        try:
            raw = fetch_bytes(self.url, self.cfg.fetch, data=json.dumps(body).encode("utf-8"),
                              headers=headers, sleep=self.sleep)
        except FetchError as e:
            if e.retryable or e.status is None:
                raise
            raise PixmoError(f"chat endpoint answered {e.reason}", file=self.url) from e
        try:
            content = json.loads(raw)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise PixmoError(f"reply is not a chat completion: {raw[:200]!r}",
                             file=self.url) from e
        if not isinstance(content, str):
            raise PixmoError(f"reply content is {type(content).__name__}, not text", file=self.url)
        return content.strip()

    def failure(self, error: FetchError) -> str:
        """A caption failure's detail for a request that kept failing."""
        what = (f"HTTP {error.status}" if error.status is not None
                else f"no answer within {self.cfg.timeout_s} s: {error.reason}")
        return f"{what} after {self.cfg.retries} retries"


class CaptionWriter:
    """The caption stage: the transcript records of one image in, one
    ``Caption`` (or a ``CaptionFailure``) out."""

    def __init__(self, cfg: CaptionConfig | None = None,
                 sleep: Callable[[float], object] = time.sleep) -> None:
        self.cfg = cfg or CaptionConfig()
        self.client = LLMClient(self.cfg.llm, sleep) if self.cfg.method == "llm" else None

    def __call__(self, transcripts: Sequence[Mapping[str, Any]]) -> Caption | CaptionFailure:
        texts = [t["text"] for t in transcripts if t.get("text", "").strip()]
        session_ids = tuple(t["session_id"] for t in transcripts if t.get("session_id"))
        if not texts:
            return CaptionFailure(Reason.CAPTION_FAILED, "no transcript text", session_ids)
        if self.client is None:
            text = merge_transcripts(texts, self.cfg)
            model = None
        else:
            try:
                text = self.client.complete(self._prompt(texts))
            except FetchError as e:
                if not e.retryable:
                    raise
                return CaptionFailure(Reason.CAPTION_FAILED, self.client.failure(e), session_ids)
            model = self.cfg.llm.model
        if not text.strip():
            return CaptionFailure(Reason.CAPTION_FAILED, "caption is empty", session_ids)
        return Caption(text=text.strip(), method=self.cfg.method, model=model,
                       session_ids=session_ids)

    def _prompt(self, texts: list[str]) -> str:
        llm = self.cfg.llm
        if len(texts) == 1:
            return llm.clean_prompt.replace("{transcript}", texts[0])
        joined = "\n\n".join(f"Transcript {i}:\n{t}" for i, t in enumerate(texts, 1))
        return llm.merge_prompt.replace("{transcripts}", joined)

