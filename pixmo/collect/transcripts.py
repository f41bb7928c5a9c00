"""The background transcript of each uploaded recording, shown to its annotator so that a bad
recording can be redone while they still have the image in front of them.

One worker thread owns one ``Transcriber`` (the toolkit's, with the build's QC), loaded on
its first clip, so uploads never wait for Whisper. The upload was decoded once to check it;
queued clips keep those samples up to ``HELD_BYTES`` in all, so a clip is not decoded twice
(decoding again cost a quarter of the server's throughput under load), and beyond that a
queued clip is the name of its file, decoded when its turn comes: when uploads outpace
Whisper for long the queue grows by a path each, not by minutes of samples. Transcripts are
advice for the annotator only: ``pixmo build`` transcribes the audio again with its own
settings.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pixmo.rejects import Reject
from pixmo.speech.audio import Audio, read_audio
from pixmo.speech.config import SpeechConfig

log = logging.getLogger(__name__)

HELD_BYTES = 64 << 20  # decoded samples the queue may hold (a minute at 16 kHz: 3.8 MB)


@dataclass(frozen=True)
class _Job:
    task_id: str
    annotator: str
    session_id: str
    path: Path
    audio: Audio | None  # the samples decoded at upload, while the queue holds few


class TranscriptWorker:
    """Transcribes queued clips in order; ``on_reject(task_id, annotator)`` is called for a
    clip that fails QC (the app reopens the task for a redo)."""

    def __init__(self, speech: SpeechConfig,
                 on_reject: Callable[[str, str], None] = lambda tid, who: None) -> None:
        self.speech = speech
        self.on_reject = on_reject
        self._results: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._stopping = False
        self._held = 0
        self._thread = threading.Thread(target=self._run, name="transcripts", daemon=True)
        self._thread.start()

    def submit(self, task_id: str, annotator: str, session_id: str, path: Path,
               audio: Audio | None = None) -> None:
        """Queue the recording written at ``path`` (checked audio: it was decoded once, to
        ``audio``, kept with the job while the queue's samples stay within ``HELD_BYTES``)."""
        with self._lock:
            self._results[task_id] = {"status": "pending", "session_id": session_id}
            if audio is not None and self._held + audio.samples.nbytes > HELD_BYTES:
                audio = None
            self._held += 0 if audio is None else audio.samples.nbytes
        self._jobs.put(_Job(task_id, annotator, session_id, Path(path), audio))

    def result(self, task_id: str) -> dict[str, Any] | None:
        with self._lock:
            found = self._results.get(task_id)
            return None if found is None else dict(found)

    def wait_idle(self) -> None:
        """Block until every queued clip is transcribed (tests and shutdown)."""
        self._jobs.join()

    def close(self) -> None:
        """Stop after the clip in hand: what is still queued is dropped (advice only)."""
        self._stopping = True
        self._jobs.put(None)
        self._thread.join()

    def _run(self) -> None:
        from pixmo.speech.transcribe import Transcriber

        transcriber: Transcriber | None = None
        while (job := self._jobs.get()) is not None:
            if self._stopping:
                self._jobs.task_done()
                continue
            try:
                transcriber = transcriber or Transcriber(self.speech)
                audio = job.audio if job.audio is not None else read_audio(job.path,
                                                                            self.speech.audio)
                out = transcriber(audio, annotator=job.annotator, session_id=job.session_id)
                self._store(job, out)
            except Exception as exc:  # a broken model must not take the server down
                log.exception("transcribing %s failed", job.session_id)
                self._set(job.task_id, {"status": "error", "session_id": job.session_id,
                                        "reason": f"{type(exc).__name__}: {exc}"})
            finally:
                if job.audio is not None:
                    with self._lock:
                        self._held -= job.audio.samples.nbytes
                self._jobs.task_done()
        self._jobs.task_done()

    def _store(self, job: _Job, out: Any) -> None:
        if isinstance(out, Reject):  # the task is reopened before the page can ask to redo
            self.on_reject(job.task_id, job.annotator)
            self._set(job.task_id, {"status": "rejected", "session_id": job.session_id,
                                    "reason": out.reason.value, "detail": out.detail})
        else:
            self._set(job.task_id, {"status": "done", "session_id": job.session_id,
                                    "text": out.text, "duration_s": round(out.duration_s, 2),
                                    "model": out.model})

    def _set(self, task_id: str, value: dict[str, Any]) -> None:
        with self._lock:
            self._results[task_id] = value
