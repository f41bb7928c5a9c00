"""How synthetic raw data is made (``SynthConfig``): scenes, image formats,
speakers and voices, simulated annotators' habits, and the bad records."""

from __future__ import annotations

from dataclasses import dataclass, field

from pixmo.config import at_least, between, check_fields
from pixmo.errors import ConfigError
from pixmo.synth.scenes import SceneConfig
from pixmo.synth.voices import Voice

_SHARE = between(0, 1)


@dataclass(frozen=True)
class SynthConfig:
    """How synthetic raw data is made. ``first_index`` numbers the first image
    (a held-out set starts past the training set); shares are probabilities."""

    scene: SceneConfig = field(default_factory=SceneConfig)
    first_index: int = 0
    png_share: float = 0.3
    exif_share: float = 0.15
    multi_speaker_share: float = 0.3  # images described by 2-3 speakers
    speech_share: float = 1.0  # images with spoken descriptions; the rest only have clicks
    # eSpeak NG's female variants (+f1..+f5) add breath noise that differs from run
    # to run; these voices give the same samples every time
    voices: tuple[Voice, ...] = (Voice("en-us", 50), Voice("en", 55), Voice("en+m3", 40),
                                 Voice("en-gb-x-rp", 65), Voice("en-us+m7", 45))
    min_words_per_minute: int = 150
    max_words_per_minute: int = 180
    clip_seconds: tuple[float, float] = (10.0, 18.0)  # target length of a description
    pad_seconds: float = 0.5  # silence before and after each description
    two_annotator_share: float = 0.5
    click_sigma: float = 0.15  # click noise, as a share of the object's radius
    miss_rate: float = 0.08
    duplicate_rate: float = 0.1
    absent_label_share: float = 0.6  # images with a "not present" label
    bad_records: bool = True
    workers: int = 2  # processes speaking clips

    def __post_init__(self) -> None:
        check_fields(self, first_index=at_least(0), png_share=_SHARE, exif_share=_SHARE,
                     multi_speaker_share=_SHARE, speech_share=_SHARE,
                     two_annotator_share=_SHARE, miss_rate=_SHARE, duplicate_rate=_SHARE,
                     absent_label_share=_SHARE, workers=at_least(1))
        if not self.voices:
            raise ConfigError("must not be empty", field="SynthConfig.voices")
        if not 80 <= self.min_words_per_minute <= self.max_words_per_minute <= 450:
            raise ConfigError(f"needs 80 <= min_words_per_minute <= max_words_per_minute <= 450, "
                              f"got {self.min_words_per_minute}, {self.max_words_per_minute}",
                              field="SynthConfig")
