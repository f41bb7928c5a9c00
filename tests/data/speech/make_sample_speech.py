"""Regenerate the sample speech in this folder with eSpeak NG.

Each entry of ``scripts.json`` is read aloud by eSpeak NG (the library and
voice data shipped in the ``espeakng-loader`` wheel, driven through ctypes, so
nothing needs apt) and written as 16 kHz mono Opus (or FLAC) next to this file.
The scripts are the ground truth the transcription tests score against.

    .venv/bin/python tests/data/speech/make_sample_speech.py
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import soundfile as sf

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))

from pixmo.speech.audio import SAMPLE_RATE, decode_audio  # noqa: E402
from pixmo.synth.tts import speaker  # noqa: E402


def main() -> None:
    scripts = json.loads((HERE / "scripts.json").read_text())
    engine = speaker()  # pixmo.synth.tts: eSpeak NG through ctypes
    for clip in scripts:
        pcm = engine.say(clip["text"], clip["voice"], clip["words_per_minute"], clip["pitch"])
        # Resample with the library's own decoder so the test input matches production.
        raw = HERE / (clip["file"] + ".tmp.wav")
        sf.write(raw, pcm, engine.rate, subtype="PCM_16")
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
