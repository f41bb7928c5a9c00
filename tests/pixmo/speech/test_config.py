"""Speech settings refuse values out of range, naming the field."""

from __future__ import annotations

import pytest

from pixmo.speech.config import QCConfig, SpeechConfig


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="SpeechConfig.backend must be one of"):
        SpeechConfig(backend="whisper.cpp")
    with pytest.raises(ValueError, match="SpeechConfig.beam_size must be >= 1, got 0"):
        SpeechConfig(beam_size=0)
    with pytest.raises(ValueError, match="QCConfig.max_no_speech_prob must be in"):
        QCConfig(max_no_speech_prob=2)
    with pytest.raises(ValueError, match="SpeechConfig.cpu_threads must be >= 1, got 0"):
        SpeechConfig(cpu_threads=0)
