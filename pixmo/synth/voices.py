"""Spoken descriptions for synthetic data: the voices, a clip to speak
(``SpeechJob``), and every clip spoken in its own fresh process.

eSpeak NG carries state from one utterance to the next within a process, so
each clip is spoken in a fresh one (``pixmo.synth.tts``): the audio is
byte-identical for the same seed.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pixmo.atomic import atomic_write_bytes
from pixmo.errors import PixmoError

SAMPLE_RATE = 16_000


@dataclass(frozen=True)
class Voice:
    name: str
    pitch: int


@dataclass(frozen=True)
class SpeechJob:
    """One clip to speak; run in a fresh process (``_speak``)."""

    text: str
    path: str
    voice: str
    words_per_minute: int
    pitch: int
    pad_seconds: float = 0.0
    max_seconds: float | None = None


def _soundfile() -> Any:
    try:
        import soundfile
    except ImportError as exc:
        raise PixmoError("synthetic audio needs 'soundfile': pip install "
                         "'pixmo-toolkit[speech,synth]'") from exc
    return soundfile


def write_samples(path: Path, samples: np.ndarray, fmt: str) -> None:
    """Write mono float samples at ``SAMPLE_RATE`` as 16-bit ``fmt`` (FLAC, WAV)."""
    with io.BytesIO() as buf:
        _soundfile().write(buf, samples, SAMPLE_RATE, format=fmt, subtype="PCM_16")
        atomic_write_bytes(path, buf.getvalue())


def _speak(job: SpeechJob) -> float:
    """Speak one clip in a fresh process; returns its seconds."""
    from pixmo.synth.tts import synthesize_in_fresh_process

    path = synthesize_in_fresh_process(job.text, job.path, voice=job.voice,
                                       words_per_minute=job.words_per_minute, pitch=job.pitch,
                                       sample_rate=SAMPLE_RATE, pad_seconds=job.pad_seconds,
                                       max_seconds=job.max_seconds)
    info = _soundfile().info(str(path))
    return info.frames / info.samplerate


def speak_all(jobs: list[SpeechJob], workers: int) -> list[float]:
    """Every clip in its own fresh process (eSpeak NG's state would otherwise
    carry over between clips and change the samples), ``workers`` at a time."""
    from concurrent.futures import ThreadPoolExecutor

    from pixmo.synth.tts import speaker

    if not jobs:
        return []
    speaker()  # a missing espeakng-loader fails here, with its message
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(_speak, jobs))
