"""The background transcript of each uploaded recording, shown to its annotator so that a bad
recording can be redone while they still have the image in front of them.

One worker thread owns one ``Transcriber`` (the toolkit's, with the build's QC), loaded on
its first clip, so uploads never wait for Whisper. A queued clip is the name of its file,
decoded when its turn comes: when uploads outpace Whisper the queue grows by a path each, not
by minutes of samples. Transcripts are advice for the annotator only: ``pixmo build``
transcribes the audio again with its own settings.
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
from pixmo.speech.audio import read_audio
from pixmo.speech.config import SpeechConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Job:
    task_id: str
    annotator: str
    session_id: str
    path: Path


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
        self._thread = threading.Thread(target=self._run, name="transcripts", daemon=True)
        self._thread.start()

    def submit(self, task_id: str, annotator: str, session_id: str, path: Path) -> None:
        """Queue the recording written at ``path`` (checked audio: it was decoded once)."""
        with self._lock:
            self._results[task_id] = {"status": "pending", "session_id": session_id}
        self._jobs.put(_Job(task_id, annotator, session_id, Path(path)))

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
                audio = read_audio(job.path, self.speech.audio)
                out = transcriber(audio, annotator=job.annotator, session_id=job.session_id)
                self._store(job, out)
            except Exception as exc:  # a broken model must not take the server down
                log.exception("transcribing %s failed", job.session_id)
                self._set(job.task_id, {"status": "error", "session_id": job.session_id,
                                        "reason": f"{type(exc).__name__}: {exc}"})
            finally:
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
