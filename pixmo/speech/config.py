"""Speech settings: which Whisper backend and model transcribe, how they decode,
and the QC thresholds a transcript must meet.

Decoding uses temperature 0 only by default: a build must give the same
transcript every time, and QC catches repetition loops (compression ratio)
instead of resampling them. The thread count is a decoding setting like the
others (``cpu_threads``), never "what the library picks".
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pixmo.config import at_least, between, check_fields, one_of
from pixmo.errors import ConfigError
from pixmo.speech.audio import AudioConfig

BACKENDS = ("faster-whisper", "openai-whisper", "transformers")
DEVICES = ("auto", "cpu", "cuda")
DEFAULT_MODEL = "tiny.en"


@dataclass(frozen=True)
class QCConfig:
    """Thresholds for accepting a transcript.

    ``min_speech_s`` follows PixMo's collection rule (60 s with three speakers
    per image, 90 s with one); only the demo lowers it. ``min_avg_logprob``
    sits between what tiny.en gives clear English (-0.25 to -0.5 on the
    sample speech) and German read to it (-0.86).
    """

    min_speech_s: float = 60.0
    silence_dbfs: float = -50.0
    languages: tuple[str, ...] = ("en",)  # accepted languages; empty accepts any
    min_language_probability: float = 0.5
    min_avg_logprob: float = -0.7
    max_no_speech_prob: float = 0.6
    max_compression_ratio: float = 2.4
    min_words: int = 20

    def __post_init__(self) -> None:
        check_fields(self, min_speech_s=at_least(0), min_words=at_least(0),
                     min_language_probability=between(0, 1), max_no_speech_prob=between(0, 1))


@dataclass(frozen=True)
class SpeechConfig:
    """Which backend and model transcribe, and how.

    ``model`` is a name or a path; ``None`` is the bundled ``tiny.en``.
    ``device`` is ``cpu``, ``cuda`` or ``auto``. ``compute_type`` ``None`` picks
    int8 (faster-whisper) or float32 on CPU and float16 on GPU. ``batch_size``
    ``None`` batches (8) on GPU only. ``language`` forces the decoding language;
    ``None`` lets the model detect it. ``cpu_threads`` is the number of threads
    one model decodes with on CPU: a decoding setting like the others, recorded
    in each transcript, so one process per core (``--workers``) is the way to
    use more cores without changing the setting.
    """

    backend: str = "faster-whisper"
    model: str | None = None
    device: str = "auto"
    compute_type: str | None = None
    beam_size: int = 5
    batch_size: int | None = None
    language: str | None = None
    temperatures: tuple[float, ...] = (0.0,)
    cpu_threads: int = 1
    audio: AudioConfig = field(default_factory=AudioConfig)
    qc: QCConfig = field(default_factory=QCConfig)

    def __post_init__(self) -> None:
        check_fields(self, backend=one_of(BACKENDS), device=one_of(DEVICES),
                     beam_size=at_least(1), batch_size=at_least(1), cpu_threads=at_least(1))
        if not self.temperatures or any(t < 0 for t in self.temperatures):
            raise ConfigError(f"must be non-empty and >= 0, got {self.temperatures}",
                              field="SpeechConfig.temperatures")
