"""``pixmo collect`` as a user runs it: a real server on 127.0.0.1 killed with SIGKILL during
a burst of submissions (at moments chosen by acknowledgements, not by sleeps) keeps every
acknowledged record exactly once, repairs a torn tail on restart and says so; ``pixmo build
--raw`` (Beam) then reads what it wrote; and its user errors are one line."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from pipelines.cli import main
from pixmo.dataset.reader import iter_samples
from tests.collect_raw import (
    ALICE,
    BOB,
    CAROL,
    SHORT_S,
    SPEECH_CLIP,
    Server,
    auth,
    jsonl,
    make_raw,
    write_annotators,
)
from tests.one_line import assert_error_in_process, assert_one_line

CLIP = SPEECH_CLIP.read_bytes()


class Burst:
    """Three annotators doing tasks at once until none is left or the server is gone;
    ``enough`` is set once ``stop_after`` submissions were acknowledged (201)."""

    def __init__(self, url: str, stop_after: int) -> None:
        self.acked: list[tuple[str, dict]] = []
        self.failed: list[str] = []
        self.lock, self.enough = threading.Lock(), threading.Event()
        self.stop_after = stop_after
        self.threads = [threading.Thread(target=self.annotate, args=(url, token))
                        for token in (ALICE, BOB, CAROL)]
        for t in self.threads:
            t.start()

    def annotate(self, url: str, token: str) -> None:
        try:
            with httpx.Client(base_url=url, timeout=300) as client:
                while (res := client.get("/api/task", headers=auth(token))).status_code == 200:
                    self.submit(client, token, res.json())
        except httpx.TransportError:
            pass  # killed
        finally:
            self.enough.set()  # also when this annotator ran out of tasks or failed

    def submit(self, client: httpx.Client, token: str, t: dict) -> None:
        if t["kind"] == "caption":
            done = client.post("/api/caption", headers=auth(token),
                               data={"task_id": t["task_id"]}, files={"audio": ("a", CLIP)})
        else:
            done = client.post("/api/points", headers=auth(token), json={
                "task_id": t["task_id"], "label": f"thing {t['task_id']}",
                "points": [{"x": 5, "y": 7}], "units": "pixels"})
        with self.lock:
            if done.status_code != 201:
                self.failed.append(done.text)
                return
            self.acked.append((t["kind"], done.json()))
            if len(self.acked) >= self.stop_after:
                self.enough.set()

    def join(self) -> None:
        for t in self.threads:
            t.join()
        assert self.failed == []


@pytest.mark.parametrize("kill_after", [1, 9])
def test_a_killed_server_keeps_every_acknowledged_record(tmp_path, kill_after):
    raw = make_raw(tmp_path / "raw", images=7)
    annotators = write_annotators(tmp_path / "annotators.json")
    server = Server(raw, annotators)
    assert server.url.startswith("http://127.0.0.1:")
    assert server.lines[0] == "8 images, 16 tasks"
    run = Burst(server.url, kill_after)
    run.enough.wait()
    server.kill()
    run.join()
    acked = run.acked
    with open(raw / "points.jsonl", "a") as fh:
        fh.write('{"image": "images/00')  # as a kill in the middle of a write leaves it
    restarted = Server(raw, annotators)
    assert restarted.lines[0].endswith("points.jsonl: repaired a torn last line "
                                       "(20 bytes dropped)")
    assert len(acked) >= kill_after
    written = {"caption": jsonl(raw / "captions.jsonl"), "points": jsonl(raw / "points.jsonl")}
    for kind, record in acked:
        assert written[kind].count(record) == 1, record
    ids = [r["session_id"] for r in written["caption"]] + [
        r["annotation_id"] for r in written["points"]]
    assert len(ids) == len(set(ids)) >= len(acked)
    for record in written["caption"]:
        assert (raw / record["audio"]).read_bytes() == CLIP
    assert sorted(p.name for p in (raw / "audio").iterdir()) == sorted(
        Path(r["audio"]).name for r in written["caption"])  # no half-written audio left
    kind, record = acked[0]
    token = {"alice": ALICE, "bob": BOB, "carol": CAROL}[record["annotator"]]
    with httpx.Client(base_url=restarted.url, timeout=120) as client:
        again = (client.post("/api/points", headers=auth(token), json={
            "task_id": record["annotation_id"], "label": "x", "points": [], "units": "pixels"})
            if kind == "points" else client.post(
            "/api/caption", headers=auth(token), data={"task_id": record["session_id"]},
            files={"audio": ("a.opus", CLIP)}))
    assert (again.status_code, again.json()) == (200, record)
    restarted.kill()


def test_pixmo_build_reads_what_collect_wrote(tmp_path):
    raw = make_raw(tmp_path / "raw", images=1)
    server = Server(raw, write_annotators(tmp_path / "annotators.json"))
    run = Burst(server.url, 4)  # every task of 2 images
    run.join()
    acked = run.acked
    server.proc.send_signal(signal.SIGINT)  # Ctrl-C: uvicorn finishes what it was doing
    assert server.proc.wait() == 0
    assert "Traceback" not in server.proc.stderr.read()
    assert len(acked) == 4
    out = tmp_path / "out"
    assert main(["build", "--raw", str(raw), "--out", str(out), "--min-speech-s",
                 str(SHORT_S)]) == 0
    samples = sorted(iter_samples(out), key=lambda s: s.json["image"]["source"])
    assert [s.json["image"]["source"] for s in samples] == ["images/000.png",
                                                            "images/turned.jpg"]
    for sample in samples:
        (transcript,) = sample.json["transcripts"]
        assert "kitchen" in transcript["text"].lower()
        (pts,) = sample.json["points"]
        assert pts["label"].startswith("thing p-")
        assert len(pts["points"]) == 1
    turned = samples[1].json
    assert (turned["image"]["width"], turned["image"]["height"]) == (240, 320)
    # stored (5, 7) of 320x240 turned 90 degrees clockwise: displayed x = 240 - 7, y = 5
    x, y = turned["points"][0]["points"][0]
    assert (round(x / 100 * 240, 2), round(y / 100 * 320, 2)) == (233.0, 5.0)
    assert json.loads((out / "dataset.json").read_text())["counts"]["samples"] == 2


def test_without_an_annotators_file_one_annotator_gets_a_login_link(tmp_path):
    server = Server(make_raw(tmp_path / "raw", images=0), None)
    try:
        link = server.lines[-1]
        assert link.startswith(f"login link for annotator a1: {server.url}#token=")
        token = link.split("#token=")[1]
        assert len(token) >= 16
        with httpx.Client(base_url=server.url) as client:
            assert client.get("/api/task", headers=auth(token)).json()["kind"] == "caption"
            assert client.get("/api/task", headers=auth(ALICE)).status_code == 401
    finally:
        server.kill()


ERRORS = [
    (["collect", "--raw", "{missing}"], "{missing}: no images/ folder"),
    (["collect", "--raw", "{raw}", "--annotators", "{text}"], "{text}: not JSON"),
    (["collect", "--raw", "{raw}", "--labels", "{missing}"], "No such file"),
    (["collect", "--raw", "{raw}", "--speakers-per-image", "0"],
     "--speakers-per-image must be >= 1, got 0"),
    (["collect", "--raw", "{raw}", "--lease-s", "0"], "--lease-s must be > 0"),
    (["collect", "--raw", "{raw}", "--min-speech-s", "900"],
     "--min-speech-s must be <= max_audio_s=600, got 900"),
    (["collect", "--raw", "{raw}", "--port", "70000"], "--port must be 0-65535, got 70000"),
    (["collect", "--raw", "{raw}", "--port", "x"], "invalid int value"),
    (["collect", "--raw", "{raw}", "--host", "192.0.2.1", "--port", "0"],  # not this machine's
     "cannot listen on 192.0.2.1:0: Cannot assign requested address"),
]


@pytest.fixture
def paths(tmp_path) -> dict[str, str]:
    (tmp_path / "notes.txt").write_text("not json")
    return {"raw": str(make_raw(tmp_path / "raw", images=0)), "missing":
            str(tmp_path / "missing"), "text": str(tmp_path / "notes.txt")}


@pytest.mark.parametrize("row", ERRORS, ids=lambda r: " ".join(r[0][1:]))
def test_user_errors_are_one_line(row, paths, capsys):
    assert_error_in_process(main, "pixmo", row, paths, capsys)


def test_a_port_in_use_is_one_line(paths, tmp_path):
    server = Server(Path(paths["raw"]), write_annotators(tmp_path / "a.json"))
    port = server.url.rsplit(":", 1)[1].strip("/")
    try:
        done = subprocess.run([str(Path(sys.executable).with_name("pixmo")), "collect", "--raw",
                               paths["raw"], "--port", port], capture_output=True, text=True,
                              timeout=120)
    finally:
        server.kill()
    assert done.returncode == 2
    assert_one_line(done.stderr, "pixmo", "collect", "Address already in use")
    assert_one_line(done.stderr, "pixmo", "collect", f"cannot listen on 127.0.0.1:{port}: ")
