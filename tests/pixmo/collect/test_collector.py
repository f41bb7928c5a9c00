"""The collection without HTTP: which images are offered (and which not, with why), records
valid against their schemas, a redo after a transcript QC refused, and the state read back
from the files after a restart."""

from __future__ import annotations

import io
import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from pixmo.collect.collector import CollectError, Collector, write_lock_index
from pixmo.collect.config import CollectConfig
from pixmo.errors import PixmoError
from pixmo.images import ImageConfig
from pixmo.raw import RawRecord, read_records
from pixmo.schema import check
from tests.collect_raw import SHORT_S, SPEECH_CLIP, jsonl, make_raw

CLIP = SPEECH_CLIP.read_bytes()


def silent_wav(seconds: float) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.zeros(int(seconds * 16000), np.float32), 16000, format="WAV")
    return buf.getvalue()


def test_images_offered_and_those_not(tmp_path):
    raw = make_raw(tmp_path / "raw", images=1)
    (raw / "images/notes.txt").write_text("not an image")
    (raw / "images/broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))
    (raw / "images/sub").mkdir()
    (raw / "images/000.png").rename(raw / "images/sub/000.png")
    c = Collector(raw, CollectConfig(images=ImageConfig(max_pixels=320 * 240)), lambda: 0.0,
                  transcribe=False)
    assert sorted(c.images) == ["sub/000.png", "turned.jpg"]
    turned = c.images["turned.jpg"]
    assert (turned.width, turned.height, turned.orientation) == (320, 240, 6)
    assert [line.split(":")[0] for line in c.skipped] == ["images/broken.png",
                                                          "images/notes.txt"]
    c.close()
    with pytest.raises(PixmoError, match="no images/ folder"):
        Collector(tmp_path, CollectConfig(), lambda: 0.0, transcribe=False)


def test_a_link_out_of_images_is_not_offered_and_a_deleted_image_is_404(tmp_path):
    raw = make_raw(tmp_path / "raw", images=1)
    secret = tmp_path / "elsewhere.png"
    (raw / "images/000.png").rename(secret)
    (raw / "images/000.png").symlink_to(secret)  # a valid image, but not in images/
    (raw / "images/inside.jpg").symlink_to(raw / "images/turned.jpg")  # in images/: fine
    c = Collector(raw, CollectConfig(), lambda: 0.0, transcribe=False)
    assert sorted(c.images) == ["inside.jpg", "turned.jpg"]
    assert c.skipped == ["images/000.png: a link to a file outside images/"]
    (raw / "images/turned.jpg").unlink()
    with pytest.raises(CollectError) as err:
        c.image("turned.jpg")
    assert (err.value.status, err.value.message) == (
        404, "image 'turned.jpg' is no longer in images/")
    c.close()


def test_an_image_over_the_byte_limit_is_not_read(tmp_path):
    raw = make_raw(tmp_path / "raw", images=0)
    with open(raw / "images/huge.png", "wb") as fh:  # 1 TiB, sparse: reading it would fail
        fh.truncate(1 << 40)
    c = Collector(raw, CollectConfig(), lambda: 0.0, transcribe=False)
    assert sorted(c.images) == ["turned.jpg"]
    assert c.skipped == [f"images/huge.png: {1 << 40} bytes exceeds the limit of {64 << 20}"]
    c.close()


def test_records_are_what_pixmo_build_reads(tmp_path):
    raw = make_raw(tmp_path / "raw", images=0)
    c = Collector(raw, CollectConfig(min_speech_s=SHORT_S), lambda: 0.0, transcribe=False)
    cap = c.next_task("ann")
    assert c.submit_caption("ann", cap["task_id"], CLIP)[0] == 201
    pts = c.next_task("ann")
    body = {"task_id": pts["task_id"], "label": "sun", "units": "pixels",
            "points": [{"x": 1, "y": 2}, {"x": 319, "y": 239.5}]}
    assert c.submit_points("ann", body)[0] == 201
    c.close()
    for name, schema in (("captions.jsonl", "caption_session"),
                         ("points.jsonl", "point_annotation")):
        rows = list(read_records(raw / name, "test"))
        assert len(rows) == 1 and isinstance(rows[0], RawRecord)
        assert check(schema, rows[0].data) is None
    assert (raw / jsonl(raw / "captions.jsonl")[0]["audio"]).read_bytes() == CLIP


def test_what_is_acknowledged_was_fsynced_audio_first(tmp_path, monkeypatch):
    raw = make_raw(tmp_path / "raw", images=0).resolve()
    c = Collector(raw, CollectConfig(min_speech_s=SHORT_S), lambda: 0.0, transcribe=False)
    cap = c.next_task("ann")["task_id"]
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def name(path: str) -> str:
        return Path(path).relative_to(raw).as_posix().replace(f".{os.getpid()}.", ".")

    def fsync(fd: int) -> None:
        real_fsync(fd)
        events.append(("fsync", name(os.readlink(f"/proc/self/fd/{fd}"))))

    def replace(src: str, dst: str) -> None:
        real_replace(src, dst)
        events.append(("rename", name(dst)))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    assert c.submit_caption("ann", cap, CLIP)[0] == 201
    assert events == [("fsync", f"audio/{cap}.ogg.partial"), ("rename", f"audio/{cap}.ogg"),
                      ("fsync", "audio"), ("fsync", "captions.jsonl")]
    events.clear()
    body = {"task_id": c.next_task("ann")["task_id"], "label": "sun", "units": "pixels",
            "points": []}
    assert c.submit_points("ann", body)[0] == 201
    assert events == [("fsync", "points.jsonl")]
    monkeypatch.undo()
    c.close()


def test_a_recording_qc_refuses_is_redone_as_a_new_session(tmp_path):
    raw = make_raw(tmp_path / "raw", images=0)
    c = Collector(raw, CollectConfig(min_speech_s=SHORT_S), lambda: 0.0)
    tid = c.next_task("ann")["task_id"]
    assert c.submit_caption("ann", tid, silent_wav(6.0))[0] == 201
    c.worker.wait_idle()
    said = c.transcript("ann", tid)
    assert (said["status"], said["reason"], said["redo"]) == ("rejected", "silence", True)
    assert c.next_task("ann")["task_id"] == tid  # handed back to her
    status, record = c.submit_caption("ann", tid, CLIP)
    assert (status, record["session_id"], record["audio"]) == (201, f"{tid}-r2",
                                                               f"audio/{tid}-r2.ogg")
    c.worker.wait_idle()
    assert c.transcript("ann", tid)["status"] == "done"
    with pytest.raises(CollectError) as err:
        c.transcript("bob", tid)
    assert err.value.status == 404
    c.close()
    again = Collector(raw, CollectConfig(min_speech_s=SHORT_S), lambda: 0.0, transcribe=False)
    assert again.submit_caption("ann", tid, CLIP) == (200, record)
    assert again.board.progress("ann") == {"done": 1, "left": 1}
    again.close()


def test_a_restart_knows_what_is_done_and_who_saw_what(tmp_path):
    raw = make_raw(tmp_path / "raw", images=1)
    c = Collector(raw, CollectConfig(min_speech_s=SHORT_S, speakers_per_image=2),
                  lambda: 0.0, transcribe=False)
    tid = c.next_task("ann")["task_id"]
    _, record = c.submit_caption("ann", tid, CLIP)
    c.close()
    with open(raw / "captions.jsonl", "a") as fh:  # a session made outside the app
        fh.write('{"image": "images/turned.jpg", "audio": "x.ogg", "annotator": "ann", '
                 '"session_id": "elsewhere"}\n{"torn')
    c = Collector(raw, CollectConfig(min_speech_s=SHORT_S, speakers_per_image=2),
                  lambda: 0.0, transcribe=False)
    assert [r.dropped_bytes for r in c.repairs] == [6]
    assert c.submit_caption("ann", tid, CLIP) == (200, record)
    kinds = []
    while (t := c.next_task("ann")) is not None:
        kinds.append((t["kind"], t["image"]))
        c.board.finish(t["task_id"], "ann", {})
    assert kinds == [("points", "images/000.png"), ("points", "images/turned.jpg")]
    with pytest.raises(CollectError) as err:
        c.submit_caption("bob", tid, CLIP)
    assert err.value.status == 409
    c.close()


def test_a_slow_audio_write_holds_up_no_other_task(tmp_path, monkeypatch):
    raw = make_raw(tmp_path / "raw", images=0)
    c = Collector(raw, CollectConfig(min_speech_s=SHORT_S), lambda: 0.0, transcribe=False)
    cap, pts = c.next_task("ann")["task_id"], c.next_task("bob")["task_id"]
    assert write_lock_index(cap) != write_lock_index(pts)
    writing, release = threading.Event(), threading.Event()
    real_write = c.audio.write

    def slow_write(*args: object) -> str:  # an fsync that takes its time
        writing.set()
        release.wait()
        return real_write(*args)

    monkeypatch.setattr(c.audio, "write", slow_write)
    with ThreadPoolExecutor(1) as pool:
        caption = pool.submit(c.submit_caption, "ann", cap, CLIP)
        writing.wait()
        body = {"task_id": pts, "label": "sun", "units": "pixels", "points": []}
        assert c.submit_points("bob", body)[0] == 201  # while the audio is being written
        assert not caption.done()
        release.set()
        assert caption.result()[0] == 201
    assert [len(jsonl(raw / f)) for f in ("captions.jsonl", "points.jsonl")] == [1, 1]
    c.close()


def test_racing_duplicates_make_one_record(tmp_path):
    raw = make_raw(tmp_path / "raw", images=0)
    c = Collector(raw, CollectConfig(min_speech_s=SHORT_S), lambda: 0.0, transcribe=False)
    c.board.finish(c.next_task("ann")["task_id"], "ann", {})  # on to the pointing task
    body = {"task_id": c.next_task("ann")["task_id"], "label": "sun", "units": "pixels",
            "points": [{"x": 1, "y": 2}]}
    start = threading.Barrier(8)

    def submit() -> tuple[int, dict]:
        start.wait()
        return c.submit_points("ann", body)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: submit(), range(8)))
    c.close()
    assert sorted(status for status, _ in results) == [200] * 7 + [201]
    assert len({json.dumps(record, sort_keys=True) for _, record in results}) == 1
    assert len(jsonl(raw / "points.jsonl")) == 1
