"""Spoken descriptions: clips spoken in fresh processes come back with their
length, the same bytes every time, and samples written at the synth rate."""

from __future__ import annotations

import numpy as np
import soundfile as sf

from pixmo.synth.voices import SAMPLE_RATE, SpeechJob, speak_all, write_samples


def test_write_samples_as_flac_and_wav(tmp_path):
    tone = (0.25 * np.sin(np.arange(SAMPLE_RATE) * 0.1)).astype(np.float32)
    write_samples(tmp_path / "a.flac", tone, "FLAC")
    write_samples(tmp_path / "b.wav", tone[:0], "WAV")
    samples, rate = sf.read(str(tmp_path / "a.flac"), dtype="float32")
    assert rate == SAMPLE_RATE and np.abs(samples - tone).max() < 1e-4
    assert sf.info(str(tmp_path / "a.flac")).subtype == "PCM_16"
    assert sf.info(str(tmp_path / "b.wav")).frames == 0


def test_speak_all_returns_each_clips_seconds_in_order(tmp_path):
    assert speak_all([], workers=2) == []
    jobs = [SpeechJob("A red circle next to a blue square.", str(tmp_path / "a.flac"), "en-us",
                      160, 50, pad_seconds=0.5),
            SpeechJob("A red circle next to a blue square.", str(tmp_path / "b.flac"), "en-us",
                      160, 50, pad_seconds=0.5),
            SpeechJob("Three green stars.", str(tmp_path / "c.flac"), "en", 170, 55,
                      max_seconds=0.5)]
    seconds = speak_all(jobs, workers=2)
    assert seconds[0] == seconds[1] > 1.0 and seconds[2] == 0.5
    assert (tmp_path / "a.flac").read_bytes() == (tmp_path / "b.flac").read_bytes()
