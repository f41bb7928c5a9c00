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
