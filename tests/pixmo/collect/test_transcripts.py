"""The background transcript shown to an annotator: the toolkit's real Whisper (bundled
tiny.en) on a real recording, and a recording QC refuses handed back for a redo."""

from __future__ import annotations

import json

import numpy as np
import soundfile as sf

from pixmo.collect.config import CollectConfig
from pixmo.collect.transcripts import TranscriptWorker
from tests.collect_raw import spoken_wer
from tests.paths import SPEECH

SCRIPT = {c["file"]: c for c in json.loads((SPEECH / "scripts.json").read_text())}


def test_a_recording_is_transcribed_and_a_silent_one_sent_back(tmp_path):
    reopened = []

    def reopen(tid: str, who: str) -> None:  # before the verdict is there to be read
        reopened.append((tid, who, worker.result(tid)["status"]))

    worker = TranscriptWorker(CollectConfig(min_speech_s=5).speech, on_reject=reopen)
    clip = SPEECH / "kitchen.opus"
    silence = tmp_path / "silence.wav"
    sf.write(silence, np.zeros(16000 * 6, np.float32), 16000)
    assert worker.result("c-1") is None
    worker.submit("c-1", "ann", "c-1", clip)
    worker.submit("c-2", "bob", "c-2-r2", silence)
    worker.wait_idle()
    done = worker.result("c-1")
    assert (done["status"], done["session_id"], done["model"]) == ("done", "c-1", "tiny.en")
    assert spoken_wer(SCRIPT["kitchen.opus"]["text"], done["text"]) <= 0.35
    assert worker.result("c-2") == {"status": "rejected", "session_id": "c-2-r2",
                                    "reason": "silence", "detail": worker.result("c-2")["detail"]}
    assert reopened == [("c-2", "bob", "pending")]
    worker.close()


def test_closing_drops_what_is_still_queued():
    worker = TranscriptWorker(CollectConfig(min_speech_s=5).speech)
    clip = SPEECH / "kitchen.opus"
    worker._stopping = True  # as close() sets it, before these clips are reached
    for n in range(3):
        worker.submit(f"c-{n}", "ann", f"c-{n}", clip)
    worker.close()
    assert [worker.result(f"c-{n}")["status"] for n in range(3)] == ["pending"] * 3


def test_the_first_queued_clips_keep_their_samples_the_rest_are_read_again(tmp_path,
                                                                           monkeypatch):
    """While Whisper is busy (held here at its first clip by an event), queued clips keep the
    samples their upload was decoded to, up to HELD_BYTES, and are not read again; a clip
    queued beyond them is read from its file when its turn comes (a missing file shows
    which)."""
    import threading

    import pixmo.speech.transcribe as transcribe_module
    from pixmo.collect import transcripts
    from pixmo.speech.audio import decode_audio

    gate = threading.Event()
    real = transcribe_module.Transcriber

    class Gated(real):  # the real Whisper, started only once the queue is filled
        def __init__(self, *args, **kwargs) -> None:
            gate.wait()
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(transcribe_module, "Transcriber", Gated)
    config = CollectConfig(min_speech_s=5)
    worker = TranscriptWorker(config.speech)
    audio = decode_audio((SPEECH / "kitchen.opus").read_bytes(), cfg=config.audio)
    HELD = 3  # clips the queue may hold here
    monkeypatch.setattr(transcripts, "HELD_BYTES", HELD * audio.samples.nbytes)
    missing = tmp_path / "gone.opus"  # never written: only a clip read again opens it
    for n in range(HELD + 1):
        worker.submit(f"c-{n}", "ann", f"c-{n}", missing, audio)
    gate.set()
    worker.wait_idle()
    statuses = [worker.result(f"c-{n}")["status"] for n in range(HELD + 1)]
    assert statuses == ["done"] * HELD + ["error"]
    assert "gone.opus" in worker.result(f"c-{HELD}")["reason"]
    assert worker._held == 0
    worker.close()
