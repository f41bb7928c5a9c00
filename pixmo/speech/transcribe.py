"""The transcription stage: decoded audio in, a ``Transcript`` or a ``Reject``
out, with one loaded Whisper backend (``pixmo.speech.backends``) and QC
(``pixmo.speech.qc``); ``transcribe_files`` is what ``pixmo transcribe`` prints.

Same audio, same transcript, on any machine and in any engine: the settings
that decide the numbers (``SpeechConfig``, including ``cpu_threads``) and the
runtime they ran on are recorded in each transcript.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pixmo.errors import PixmoError
from pixmo.rejects import Reason, Reject
from pixmo.speech.audio import Audio, read_audio
from pixmo.speech.backends import load_backend
from pixmo.speech.config import SpeechConfig
from pixmo.speech.qc import STAGE, check_audio, check_transcript
from pixmo.speech.transcript import Segment, Transcript, compression_ratio


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
