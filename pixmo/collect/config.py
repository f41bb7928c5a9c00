"""Collection settings and the files an operator gives: annotator tokens and labels.

Tokens are secrets: the annotators file maps each to an annotator id, and a token shorter
than ``MIN_TOKEN_CHARS`` is refused, so a guessable one never guards a server.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from pixmo.config import above, at_least, check_fields
from pixmo.errors import ConfigError, PixmoError
from pixmo.images import ImageConfig
from pixmo.speech.audio import AudioConfig
from pixmo.speech.config import QCConfig, SpeechConfig

MIN_TOKEN_CHARS = 16
MAX_LABEL_CHARS = 200


@dataclass(frozen=True)
class CollectConfig:
    """What is collected and the limits on each upload.

    ``lease_s``: how long a task stays with the annotator it was given to. Uploads are
    bounded in bytes before they are read and in seconds while they are decoded.
    """

    labels: tuple[str, ...] = ()
    speakers_per_image: int = 1
    min_speech_s: float = 60.0
    lease_s: float = 900.0
    max_audio_bytes: int = 32 << 20
    max_audio_s: float = 600.0
    max_points: int = 200
    images: ImageConfig = field(default_factory=ImageConfig)

    def __post_init__(self) -> None:
        check_fields(self, speakers_per_image=at_least(1), min_speech_s=at_least(0),
                     lease_s=above(0), max_audio_bytes=above(0), max_audio_s=above(0),
                     max_points=at_least(1))
        if self.max_audio_s < self.min_speech_s:
            raise ConfigError(f"must be <= max_audio_s={self.max_audio_s:g}, got "
                              f"{self.min_speech_s:g}", field="CollectConfig.min_speech_s")

    @property
    def audio(self) -> AudioConfig:
        return AudioConfig(max_duration_s=self.max_audio_s, max_bytes=self.max_audio_bytes)

    @property
    def speech(self) -> SpeechConfig:
        """The transcriber's settings: the build's defaults, this collection's shortest
        speech, so the annotator sees the verdict the build will reach."""
        return SpeechConfig(audio=self.audio, qc=QCConfig(min_speech_s=self.min_speech_s))


def _read_json(path: str | os.PathLike[str]) -> object:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise PixmoError(f"not JSON: {exc.msg} (line {exc.lineno})", file=str(path)) from exc


def load_annotators(path: str | os.PathLike[str]) -> dict[str, str]:
    """``{"TOKEN": "annotator id", ...}`` from a JSON file."""
    data = _read_json(path)
    if not isinstance(data, dict) or not data:
        raise PixmoError("expected a JSON object mapping tokens to annotator ids",
                         file=str(path))
    for n, (token, who) in enumerate(data.items(), start=1):  # a token is never printed
        if len(token) < MIN_TOKEN_CHARS:
            raise PixmoError(f"a token has {len(token)} characters, fewer than "
                             f"{MIN_TOKEN_CHARS}", file=str(path), field=str(who))
        if not isinstance(who, str) or not who:
            raise PixmoError(f"annotator id of entry {n} must be a non-empty string",
                             file=str(path))
    return dict(data)


def load_labels(path: str | os.PathLike[str]) -> tuple[str, ...]:
    """Labels to point at: a JSON list of strings, or a text file with one label a line."""
    text = Path(path).read_text(encoding="utf-8")
    if Path(path).suffix == ".json":
        data = _read_json(path)
        if not isinstance(data, list) or not all(isinstance(x, str) for x in data):
            raise PixmoError("expected a JSON list of labels", file=str(path))
        labels = [x.strip() for x in data]
    else:
        labels = [line.strip() for line in text.splitlines()]
    labels = [x for x in labels if x]
    for n, label in enumerate(labels, start=1):
        if len(label) > MAX_LABEL_CHARS:
            raise PixmoError(f"label longer than {MAX_LABEL_CHARS} characters",
                             file=str(path), record=n)
    if not labels or len(set(labels)) != len(labels):
        raise PixmoError("expected distinct, non-empty labels", file=str(path))
    return tuple(labels)
