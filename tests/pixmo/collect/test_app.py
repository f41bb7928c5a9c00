"""The HTTP API of ``pixmo collect`` through Starlette's test client: every error code, token
isolation, upload limits, paths a client cannot reach, leases on an injected clock, and a
resubmission that is never a second record."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf
from starlette.testclient import TestClient

from pixmo.collect.app import MAX_JSON_BYTES, create_app
from pixmo.collect.collector import Collector
from pixmo.collect.config import CollectConfig
from tests.collect_raw import ALICE, BOB, CAROL, SHORT_S, SPEECH_CLIP, TOKENS, auth, jsonl, make_raw

LEASE_S = 100.0
CLIP = SPEECH_CLIP.read_bytes()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def make(tmp_path):
    made = []

    def make(images: int = 0, **fields) -> tuple[TestClient, Collector, Clock]:
        raw = tmp_path / "raw"
        if not raw.exists():
            make_raw(raw, images=images)
        clock = Clock()
        cfg = CollectConfig(**{"min_speech_s": SHORT_S, "lease_s": LEASE_S, **fields})
        collector = Collector(raw, cfg, clock=clock, transcribe=False)
        made.append(collector)
        return TestClient(create_app(collector, TOKENS)), collector, clock

    yield make
    for collector in made:
        collector.close()


def task(client: TestClient, token: str) -> dict:
    res = client.get("/api/task", headers=auth(token))
    assert res.status_code == 200, res.text
    return res.json()


def caption(client: TestClient, token: str, tid: str, data: bytes = CLIP,
            name: str = "clip.opus"):
    return client.post("/api/caption", headers=auth(token), data={"task_id": tid},
                       files={"audio": (name, data, "application/octet-stream")})


def points(client: TestClient, token: str, body: dict):
    return client.post("/api/points", headers=auth(token), json=body)


def error(res, status: int, says: str) -> None:
    assert res.status_code == status, res.text
    assert says in res.json()["error"]


def tone(seconds: float) -> bytes:
    """A small Ogg Vorbis file of ``seconds`` (smaller than the sample speech)."""
    buf = io.BytesIO()
    t = np.arange(int(seconds * 16000)) / 16000
    sf.write(buf, 0.3 * np.sin(2 * np.pi * 220 * t), 16000, format="OGG", subtype="VORBIS")
    return buf.getvalue()


def test_a_task_is_described_and_the_last_one_is_204(make):
    client, _, _ = make()  # one image, stored turned
    first = task(client, ALICE)
    assert first == {"task_id": first["task_id"], "kind": "caption", "image": "images/turned.jpg",
                     "width": 320, "height": 240, "orientation": 6, "min_speech_s": SHORT_S,
                     "progress": {"done": 0, "left": 2}}
    assert task(client, ALICE) == first  # the lease is still hers
    assert caption(client, ALICE, first["task_id"]).status_code == 201
    second = task(client, ALICE)
    assert (second["kind"], second["label"], second["progress"]) == (
        "points", None, {"done": 1, "left": 1})
    assert points(client, ALICE, {"task_id": second["task_id"], "label": "sun",
                                  "points": [], "units": "pixels"}).status_code == 201
    assert client.get("/api/task", headers=auth(ALICE)).status_code == 204


@pytest.mark.parametrize("headers, says", [
    ({}, "missing Authorization"), ({"Authorization": ALICE}, "missing Authorization"),
    ({"Authorization": "Basic " + ALICE}, "missing Authorization"),
    ({"Authorization": "Bearer "}, "missing Authorization"),
    ({"Authorization": "Bearer " + ALICE[:-1]}, "unknown token"),
    ({"Authorization": "Bearer " + ALICE + "x"}, "unknown token")])
def test_every_api_route_wants_a_known_token(make, headers, says):
    client, _, _ = make()
    for method, url in (("GET", "/api/task"), ("GET", "/images/turned.jpg"),
                        ("POST", "/api/caption"), ("POST", "/api/points"),
                        ("GET", "/api/caption/c-0")):
        error(client.request(method, url, headers=headers), 401, says)


def test_the_page_and_its_files_need_no_token(make):
    client, _, _ = make()
    page = client.get("/")
    assert page.status_code == 200 and "pixmo collect" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for name in ("app.js", "style.css"):
        assert client.get(f"/static/{name}").status_code == 200
    assert client.get("/static/../app.py").status_code == 404


@pytest.mark.parametrize("url", [
    "/images/../captions.jsonl", "/images/%2e%2e/captions.jsonl", "/images/..%2Fcaptions.jsonl",
    "/images/%2Fetc%2Fpasswd", "/images//etc/passwd", "/images/nothing.png", "/images/",
    "/images/turned.jpg%00.png"])
def test_only_images_found_at_start_are_served(make, url):
    client, _, _ = make()
    res = client.get(url, headers=auth(ALICE))
    assert res.status_code == 404
    assert "error" in res.json()


def test_an_image_is_served_as_stored(make, tmp_path):
    client, _, _ = make()
    res = client.get("/images/turned.jpg", headers=auth(ALICE))
    assert res.status_code == 200
    assert res.headers["content-type"] == "image/jpeg"
    assert res.content == (tmp_path / "raw/images/turned.jpg").read_bytes()


def test_caption_errors(make, tmp_path):
    client, collector, _ = make(images=1)
    cap = task(client, ALICE)["task_id"]
    pts = [t.task_id for t in collector.board.tasks if t.kind == "points"][0]
    error(caption(client, ALICE, "c-nope"), 404, "no task")
    error(caption(client, ALICE, pts), 400, "is a points task")
    error(client.post("/api/caption", headers=auth(ALICE), data={"task_id": cap},
                      files={"note": ("note.txt", b"x")}), 400, "audio file is missing")
    error(client.post("/api/caption", headers=auth(ALICE), files={"audio": ("a", CLIP)}),
          400, "task_id is missing")
    error(client.post("/api/caption", headers=auth(ALICE), json={"task_id": cap}), 415,
          "multipart")
    error(caption(client, ALICE, cap, b"hello, not audio" * 100), 415, "not an audio file")
    error(caption(client, ALICE, cap, b"OggS" + bytes(5000)), 422, "not decodable audio")
    error(caption(client, ALICE, cap, tone(2.0)), 422, "lasts 2.0 s, less than 5 s")
    error(caption(client, BOB, cap), 403, "assigned to another annotator")
    assert not (tmp_path / "raw/captions.jsonl").read_text()
    assert list((tmp_path / "raw/audio").iterdir()) == []


def test_uploads_are_bounded_in_bytes_and_seconds(make):
    client, _, _ = make(max_audio_bytes=len(CLIP) - 1, max_audio_s=10.0)
    cap = task(client, ALICE)["task_id"]
    error(caption(client, ALICE, cap), 413, f"more than {len(CLIP) - 1}")
    error(caption(client, ALICE, cap, tone(11.0)), 413, "longer than max_duration_s=10")
    chunked = client.post("/api/caption", headers={**auth(ALICE),
                          "content-type": "multipart/form-data; boundary=x"},
                          content=iter([b"--x\r\n" + bytes(len(CLIP) + 70_000)]))
    error(chunked, 413, "larger than")
    assert caption(client, ALICE, cap, tone(9.0)).status_code == 201


def test_a_resubmission_is_not_a_second_record(make, tmp_path):
    client, _, _ = make()
    cap = task(client, ALICE)["task_id"]
    first = caption(client, ALICE, cap, name="../../../etc/evil.opus")
    assert first.status_code == 201
    record = first.json()
    assert record == {"image": "images/turned.jpg", "image_sha256": record["image_sha256"],
                      "audio": f"audio/{cap}.ogg", "annotator": "alice", "session_id": cap}
    again = caption(client, ALICE, cap, tone(6.0))
    assert (again.status_code, again.json()) == (200, record)
    assert jsonl(tmp_path / "raw/captions.jsonl") == [record]
    assert [p.name for p in (tmp_path / "raw/audio").iterdir()] == [f"{cap}.ogg"]
    assert (tmp_path / "raw/audio" / f"{cap}.ogg").read_bytes() == CLIP
    error(caption(client, BOB, cap), 409, "done by another annotator")
    pts = task(client, ALICE)
    body = {"task_id": pts["task_id"], "label": "a  yellow\tsquare",
            "points": [{"x": 10, "y": 20.5}], "units": "pixels"}
    made = points(client, ALICE, body)
    assert made.status_code == 201 and made.json()["label"] == "a yellow square"
    assert (points(client, ALICE, {**body, "points": []}).json()) == made.json()
    assert len(jsonl(tmp_path / "raw/points.jsonl")) == 1


def test_points_errors(make, tmp_path):
    client, collector, _ = make(labels=("cup", "dog"), max_points=3)
    tid = task(client, ALICE)["task_id"]
    assert caption(client, ALICE, tid).status_code == 201
    t = task(client, ALICE)
    assert t["label"] == "cup"
    ok = {"task_id": t["task_id"], "label": "cup", "points": [{"x": 0, "y": 240}],
          "units": "pixels"}
    error(client.post("/api/points", headers=auth(ALICE), content=b"{}"), 415, "json")
    error(client.post("/api/points", headers={**auth(ALICE), "content-type":
                      "application/json"}, content=b"{not json"), 400, "not JSON")
    error(points(client, ALICE, [ok]), 400, "JSON object")
    error(points(client, ALICE, {**ok, "task_id": 7}), 400, "task_id")
    error(points(client, ALICE, {**ok, "points": "x"}), 400, "points (a list)")
    error(points(client, ALICE, {**ok, "points": [{"x": 1}]}), 400, "points[0]")
    error(points(client, ALICE, {**ok, "points": [{"x": True, "y": 1}]}), 400, "points[0]")
    error(points(client, ALICE, {**ok, "points": [{"x": 1, "y": 2, "z": 3}]}), 400,
          "points[0]")
    error(points(client, ALICE, {**ok, "points": [{"x": 320.5, "y": 1}]}), 422,
          "outside the 320x240 image")
    error(points(client, ALICE, {**ok, "points": [{"x": -1, "y": 1}]}), 422, "outside")
    error(points(client, ALICE, {**ok, "label": "dog"}), 422, "asks for 'cup'")
    error(points(client, ALICE, {**ok, "label": " "}), 422, "1-200 characters")
    error(points(client, ALICE, {**ok, "units": "percent"}), 422, "units must be 'pixels'")
    error(points(client, ALICE, {**ok, "points": [{"x": 1, "y": 1}] * 4}), 413, "more than 3")
    error(points(client, ALICE, {**ok, "label": "x" * MAX_JSON_BYTES}), 413, "larger than")
    error(points(client, BOB, ok), 403, "assigned to another")
    assert not (tmp_path / "raw/points.jsonl").read_text()
    assert points(client, ALICE, ok).status_code == 201
    assert jsonl(tmp_path / "raw/points.jsonl")[0]["points"] == [{"x": 0.0, "y": 240.0}]
    assert task(client, ALICE)["label"] == "dog"  # same image, another label


def test_a_lease_is_released_after_its_timeout(make):
    client, collector, clock = make()  # one image: one caption task, one pointing task
    cap = task(client, ALICE)
    pts = task(client, BOB)
    assert pts["kind"] == "points"
    assert client.get("/api/task", headers=auth(CAROL)).status_code == 204  # all leased
    clock.now += LEASE_S - 1
    assert task(client, BOB) == {**pts}  # asking again renews bob's lease
    clock.now += 2
    assert task(client, CAROL)["task_id"] == cap["task_id"]  # alice's lease ran out
    error(caption(client, ALICE, cap["task_id"]), 403, "assigned to another")
    assert caption(client, CAROL, cap["task_id"]).json()["annotator"] == "carol"


def test_a_late_submission_after_an_unclaimed_lease_is_kept(make):
    client, _, clock = make()
    cap = task(client, ALICE)
    clock.now += LEASE_S * 10
    assert caption(client, ALICE, cap["task_id"]).status_code == 201


def test_never_the_same_image_twice_for_one_kind(make):
    client, collector, _ = make(images=1, speakers_per_image=3)
    seen = {"alice": [], "bob": []}
    for token, who in ((ALICE, "alice"), (BOB, "bob")):
        while (res := client.get("/api/task", headers=auth(token))).status_code == 200:
            t = res.json()
            seen[who].append((t["kind"], t["image"]))
            if t["kind"] == "caption":
                assert caption(client, token, t["task_id"]).status_code == 201
            else:
                assert points(client, token, {"task_id": t["task_id"], "label": "sun",
                                              "points": [], "units": "pixels"}).status_code == 201
    for who, got in seen.items():
        assert len(got) == len(set(got)), who
    assert len(seen["alice"]) == 4  # 2 images x (caption, points)
    assert len(seen["bob"]) == 2  # a second speaker for each image; pointing is done
    assert collector.board.progress("carol") == {"done": 0, "left": 2}  # third speakers


def test_the_transcript_route_when_the_server_does_not_transcribe(make):
    client, _, _ = make()
    cap = task(client, ALICE)["task_id"]
    error(client.get(f"/api/caption/{cap}", headers=auth(ALICE)), 404, "no recording of yours")
    caption(client, ALICE, cap)
    assert client.get(f"/api/caption/{cap}", headers=auth(ALICE)).json() == {"status": "off"}
    error(client.get(f"/api/caption/{cap}", headers=auth(BOB)), 404, "no recording of yours")
    error(client.get("/api/caption/c-nope", headers=auth(ALICE)), 404, "no caption task")


def test_unknown_routes_and_methods_answer_json(make):
    client, _, _ = make()
    error(client.get("/api/nothing", headers=auth(ALICE)), 404, "Not Found")
    error(client.delete("/api/task", headers=auth(ALICE)), 405, "Method Not Allowed")
