"""Synthetic data settings refuse values out of range, naming the field."""

from __future__ import annotations

import pytest

from pixmo.synth.config import SynthConfig


@pytest.mark.parametrize("changes,message", [
    ({"png_share": 2.0}, "SynthConfig.png_share must be in [0, 1], got 2.0"),
    ({"miss_rate": -0.1}, "SynthConfig.miss_rate must be in [0, 1], got -0.1"),
    ({"first_index": -3}, "SynthConfig.first_index must be >= 0, got -3"),
    ({"workers": 0}, "SynthConfig.workers must be >= 1, got 0"),
    ({"voices": ()}, "SynthConfig.voices must not be empty"),
    ({"min_words_per_minute": 200},
     "SynthConfig needs 80 <= min_words_per_minute <= max_words_per_minute <= 450, got 200, 180"),
])
def test_config_errors_name_the_field(changes, message):
    with pytest.raises(ValueError) as error:
        SynthConfig(**changes)
    assert str(error.value) == message

