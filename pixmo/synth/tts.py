"""Speech synthesis with eSpeak NG, for synthetic spoken captions.

The library and voice data come from the ``espeakng-loader`` wheel (extra
``synth``) and are driven through ctypes, so nothing needs apt. eSpeak NG
speaks at its own rate (22.05 kHz); the samples are resampled here in the
frequency domain to the rate asked for and written as FLAC, WAV or Ogg Opus
by the file's suffix.

eSpeak NG keeps one voice and one callback per process, so one ``Speaker``
is shared and calls are serialised by a lock. Its samples also depend on
what it spoke before in the same process, so ``synthesize_in_fresh_process``
speaks each clip in a new process: then FLAC and WAV are byte-identical for
the same text and settings, except with the female variants (``+f1`` to
``+f5``), whose breath noise changes from run to run. Ogg Opus never is
(libsndfile picks a random stream serial number).
"""

from __future__ import annotations

import ctypes
import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np

from pixmo.atomic import atomic_open
from pixmo.errors import PixmoError

log = logging.getLogger(__name__)

FORMATS = {".flac": ("FLAC", "PCM_16"), ".wav": ("WAV", "PCM_16"), ".ogg": ("OGG", "OPUS"),
           ".opus": ("OGG", "OPUS")}

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_ESPEAK_CHARS_UTF8 = 1
_ESPEAK_RATE = 1
_ESPEAK_PITCH = 3
_SYNTH_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


def _require(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise PixmoError(
            f"speech synthesis needs the {module!r} package: pip install 'pixmo-toolkit[synth]'"
        ) from exc


class Speaker:
    """eSpeak NG in synchronous mode: ``espeak_Synth`` returns once the
    callback has received every sample."""

    def __init__(self) -> None:
        loader = _require("espeakng_loader")
        self.lib = ctypes.CDLL(loader.get_library_path())
        data = loader.get_data_path().encode()
        self.rate = self.lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data, 0)
        if self.rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed ({self.rate})")
        self._chunks: list[np.ndarray] = []
        self._callback = _SYNTH_CALLBACK(self._receive)  # keep a reference alive
        self.lib.espeak_SetSynthCallback(self._callback)
        self.lib.espeak_Synth.argtypes = [
            ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
            ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
        ]
        self.lock = threading.Lock()

    def _receive(self, wav: Any, n: int, _events: Any) -> int:
        if wav and n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0

    def say(self, text: str, voice: str, words_per_minute: int, pitch: int) -> np.ndarray:
        """int16 samples at ``self.rate`` of ``text`` spoken by ``voice``."""
        with self.lock:
            if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise PixmoError(f"unknown eSpeak NG voice {voice!r}", field="voice")
            self.lib.espeak_SetParameter(_ESPEAK_RATE, words_per_minute, 0)
            self.lib.espeak_SetParameter(_ESPEAK_PITCH, pitch, 0)
            self._chunks = []
            encoded = text.encode("utf-8") + b"\0"
            err = self.lib.espeak_Synth(encoded, len(encoded), 0, _POS_CHARACTER, 0,
                                        _ESPEAK_CHARS_UTF8, None, None)
            if err != 0:
                raise RuntimeError(f"espeak_Synth failed ({err})")
            self.lib.espeak_Synchronize()
            chunks, self._chunks = self._chunks, []
        return np.concatenate(chunks) if chunks else np.zeros(0, np.int16)


_speaker: Speaker | None = None
_speaker_lock = threading.Lock()


def speaker() -> Speaker:
    """The process's one eSpeak NG instance, loaded on first use."""
    global _speaker
    with _speaker_lock:
        if _speaker is None:
            _speaker = Speaker()
        return _speaker


def resample(samples: np.ndarray, rate: int, target: int) -> np.ndarray:
    """float32 in [-1, 1] at ``target`` Hz from int16 (or float) samples at ``rate``
    Hz: band-limited resampling in the frequency domain (numpy only, so a worker
    process that speaks one clip starts fast)."""
    x = samples.astype(np.float64)
    if samples.dtype == np.int16:
        x /= 32768.0
    if rate != target and len(x):
        n = round(len(x) * target / rate)
        spectrum = np.fft.rfft(x)
        keep = min(len(spectrum), n // 2 + 1)
        x = np.fft.irfft(spectrum[:keep], n) * (n / len(x))
    return np.clip(x, -1.0, 1.0).astype(np.float32)


def write_audio(samples: np.ndarray, out_path: str | Path, sample_rate: int) -> Path:
    """Write float samples as the format ``out_path``'s suffix names, atomically."""
    out = Path(out_path)
    fmt = FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise PixmoError(f"cannot write audio as {out.suffix!r}; use one of "
                         f"{', '.join(FORMATS)}", file=str(out))
    sf = _require("soundfile")
    with atomic_open(out) as fh:
        sf.write(fh, samples, sample_rate, format=fmt[0], subtype=fmt[1])
    return out


def synthesize_speech(text: str, out_path: str | Path, *, voice: str = "en-us",
                      words_per_minute: int = 160, pitch: int = 50,
                      sample_rate: int = 16000, pad_seconds: float = 0.0,
                      max_seconds: float | None = None) -> Path:
    """Speak ``text`` with eSpeak NG into a mono audio file (FLAC, WAV or Opus by
    suffix) at ``sample_rate``, with ``pad_seconds`` of silence before and after
    (as a person pauses; Whisper is surer of speech that does not start at the
    first sample), cut after ``max_seconds`` if given. The file appears whole
    or not at all."""
    if not text.strip():
        raise PixmoError("nothing to say: text is empty", field="text")
    if not 80 <= words_per_minute <= 450:
        raise PixmoError(f"words_per_minute must be 80-450, got {words_per_minute}",
                         field="words_per_minute")
    if not 0 <= pitch <= 99:
        raise PixmoError(f"pitch must be 0-99, got {pitch}", field="pitch")
    if sample_rate <= 0:
        raise PixmoError(f"sample_rate must be positive, got {sample_rate}", field="sample_rate")
    if pad_seconds < 0:
        raise PixmoError(f"pad_seconds must be >= 0, got {pad_seconds}", field="pad_seconds")
    engine = speaker()
    pcm = engine.say(text, voice, words_per_minute, pitch)
    samples = resample(pcm, engine.rate, sample_rate)
    if pad_seconds > 0:
        pad = np.zeros(round(pad_seconds * sample_rate), np.float32)
        samples = np.concatenate([pad, samples, pad])
    if max_seconds is not None:
        samples = samples[: int(max_seconds * sample_rate)]
    out = write_audio(samples, out_path, sample_rate)
    log.debug("spoke %d words as %s (%s, %d wpm): %.1f s", len(text.split()), out, voice,
              words_per_minute, len(pcm) / engine.rate)
    return out


def synthesize_in_fresh_process(text: str, out_path: str | Path, **options: Any) -> Path:
    """``synthesize_speech`` in a new Python process. eSpeak NG carries state
    from one utterance to the next, so only a fresh process gives the same
    samples for the same text every time."""
    import json
    import subprocess
    import sys

    job = json.dumps({"text": text, "out_path": str(out_path), **options})
    try:
        done = subprocess.run([sys.executable, "-m", "pixmo.synth.tts"], input=job, text=True,
                              capture_output=True, check=False, timeout=600)
    except subprocess.TimeoutExpired as exc:
        raise PixmoError("speech synthesis took more than 600 s", file=str(out_path)) from exc
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or ["no error output"]
        raise PixmoError(f"speech synthesis failed: {lines[-1]}", file=str(out_path))
    return Path(out_path)


def _worker() -> None:
    """Entry point of ``synthesize_in_fresh_process``: one JSON job on stdin."""
    import json
    import sys

    job = json.loads(sys.stdin.read())
    synthesize_speech(job.pop("text"), job.pop("out_path"), **job)


if __name__ == "__main__":
    _worker()
