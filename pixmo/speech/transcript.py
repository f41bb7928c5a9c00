"""Transcript records: what a backend decodes from one clip (``Decoding`` of
``Segment``s) and the ``Transcript`` a sample stores, with its provenance.

A record serialises to the same bytes for the same decoding (floats rounded),
and carries Whisper's repetition measure (``compression_ratio``) that QC reads.
"""

from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Segment:
    start: float
    end: float
    text: str
    avg_logprob: float | None
    no_speech_prob: float | None
    compression_ratio: float


@dataclass(frozen=True)
class Decoding:
    """What a backend returns for one clip."""

    segments: list[Segment]
    language: str
    language_probability: float | None


@dataclass(frozen=True)
class Transcript:
    """One transcript with its provenance: an item of ``transcripts`` in the
    ``sample`` schema (``to_record``)."""

    text: str
    annotator: str
    audio_sha256: str
    duration_s: float
    language: str
    model: str
    backend: str
    compute_type: str
    beam_size: int
    segments: list[Segment]
    language_probability: float | None = None
    avg_logprob: float | None = None
    no_speech_prob: float | None = None
    compression_ratio: float = 0.0
    session_id: str | None = None
    runtime: str | None = None
    cpu_threads: int | None = None

    @property
    def speech_s(self) -> float:
        """Seconds covered by recognised segments, the speaking time QC checks."""
        return sum(max(0.0, min(s.end, self.duration_s) - s.start) for s in self.segments if s.text)

    @property
    def words(self) -> int:
        return len(self.text.split())

    def to_record(self) -> dict[str, Any]:
        """JSON-able dict; ``None`` fields are left out, floats rounded so the
        same decoding always serialises to the same bytes."""
        return _rounded({k: v for k, v in asdict(self).items() if v is not None})


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def compression_ratio(text: str) -> float:
    """Whisper's repetition measure: bytes of text over bytes of its zlib
    compression. Looping output ("the the the ...") compresses far better."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0
