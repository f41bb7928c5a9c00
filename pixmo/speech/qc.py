"""Quality control of spoken captions: every rejection is a ``Reject`` value
with a reason, checked before transcription (cheap checks on the audio that
spare the model) and after it (the transcript's language, confidence,
repetition, speaking time and words).
"""

from __future__ import annotations

from pixmo.rejects import Reason, Reject
from pixmo.speech.audio import Audio
from pixmo.speech.config import QCConfig
from pixmo.speech.transcript import Transcript

STAGE = "transcribe"


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
