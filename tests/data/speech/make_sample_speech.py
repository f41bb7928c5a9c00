"""Regenerate the sample speech in this folder with eSpeak NG.

Each entry of ``scripts.json`` is read aloud by eSpeak NG (the library and
voice data shipped in the ``espeakng-loader`` wheel, driven through ctypes, so
nothing needs apt) and written as 16 kHz mono Opus (or FLAC) next to this file.
The scripts are the ground truth the transcription tests score against.

    .venv/bin/python tests/data/speech/make_sample_speech.py
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))

from pixmo.audio import SAMPLE_RATE, decode_audio  # noqa: E402

AUDIO_OUTPUT_SYNCHRONOUS = 2
POS_CHARACTER = 1
ESPEAK_CHARS_UTF8 = 1
ESPEAK_RATE = 1
ESPEAK_PITCH = 3
SYNTH_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


class Speaker:
    """eSpeak NG in synchronous mode: espeak_Synth returns once the callback
    has received every sample."""

    def __init__(self) -> None:
        import espeakng_loader

        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        data = espeakng_loader.get_data_path().encode()
        self.rate = self.lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, data, 0)
        if self.rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed ({self.rate})")
        self._chunks: list[np.ndarray] = []
        self._callback = SYNTH_CALLBACK(self._receive)  # keep a reference alive
        self.lib.espeak_SetSynthCallback(self._callback)
        self.lib.espeak_Synth.argtypes = [
            ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
            ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
        ]

    def _receive(self, wav, n, _events) -> int:
        if wav and n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0

    def say(self, text: str, voice: str, words_per_minute: int, pitch: int) -> np.ndarray:
        """int16 samples at ``self.rate`` of ``text`` spoken by ``voice``."""
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise RuntimeError(f"unknown eSpeak NG voice {voice!r}")
        self.lib.espeak_SetParameter(ESPEAK_RATE, words_per_minute, 0)
        self.lib.espeak_SetParameter(ESPEAK_PITCH, pitch, 0)
        self._chunks = []
        encoded = text.encode("utf-8") + b"\0"
        err = self.lib.espeak_Synth(
            encoded, len(encoded), 0, POS_CHARACTER, 0, ESPEAK_CHARS_UTF8, None, None
        )
        if err != 0:
            raise RuntimeError(f"espeak_Synth failed ({err})")
        self.lib.espeak_Synchronize()
        return np.concatenate(self._chunks)


def main() -> None:
    scripts = json.loads((HERE / "scripts.json").read_text())
    speaker = Speaker()
    for clip in scripts:
        pcm = speaker.say(clip["text"], clip["voice"], clip["words_per_minute"], clip["pitch"])
        # Resample with the library's own decoder so the test input matches production.
        raw = HERE / (clip["file"] + ".tmp.wav")
        sf.write(raw, pcm, speaker.rate, subtype="PCM_16")
        audio = decode_audio(raw.read_bytes(), source=str(raw))
        raw.unlink()
        out = HERE / clip["file"]
        tmp = out.with_name(out.name + ".tmp")
        if out.suffix == ".flac":
            sf.write(tmp, audio.samples, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
        else:
            sf.write(tmp, audio.samples, SAMPLE_RATE, format="OGG", subtype="OPUS")
        os.replace(tmp, out)
        print(f"{out.name}: {audio.duration_s:.1f} s, {out.stat().st_size} bytes")


if __name__ == "__main__":
    main()
