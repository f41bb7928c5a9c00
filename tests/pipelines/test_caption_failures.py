"""A caption the LLM endpoint never writes is accounted for, not only logged.

The endpoint is a real chat server on 127.0.0.1 that answers 503 to every
request. The build still completes; the sample keeps its transcript and
records the failure (stage, reason, detail, sessions); dataset.json,
``pixmo inspect``, ``pixmo validate`` and the report count it; the ledger
still balances; Ray writes the same bytes as Beam; an extend keeps the count
and a re-run with the endpoint back writes the caption."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image

from pipelines.cli import main
from pixmo.build import BuildConfig
from pixmo.captions import CaptionConfig, CaptionLLMConfig
from pixmo.dataset.reader import iter_samples
from pixmo.dataset.tables import read_dataset_json, read_rejects
from pixmo.dataset.verify import summarize, verify
from pixmo.dataset.writer import ShardConfig
from pixmo.report.page import write_report
from pixmo.speech.config import QCConfig, SpeechConfig
from tests.paths import SPEECH
from tests.pixmo.test_captions import ChatServer

FAILURE = {"stage": "caption", "reason": "caption_failed", "detail": "HTTP 503 after 1 retries",
           "session_ids": ["s-1"]}
LEDGER = [{"file": "captions.jsonl", "read": 1, "accepted": 1, "rejected": 0},
          {"file": "points.jsonl", "read": 3, "accepted": 2, "rejected": 1}]


def _png(path: Path, colour: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 48), colour).save(path, format="PNG")


def make_raw(root: Path) -> Path:
    """Image a has a spoken description and a point, b only a point; one
    points line is not JSON."""
    _png(root / "images/a.png", (200, 10, 10))
    _png(root / "images/b.png", (10, 200, 10))
    (root / "audio").mkdir()
    shutil.copy(SPEECH / "kitchen.opus", root / "audio/kitchen.opus")
    (root / "captions.jsonl").write_text(json.dumps(
        {"image": "images/a.png", "audio": "audio/kitchen.opus", "annotator": "s1",
         "session_id": "s-1"}) + "\n")
    point = {"label": "square", "points": [{"x": 32, "y": 24}], "units": "pixels",
             "annotator": "p1"}
    (root / "points.jsonl").write_text(
        json.dumps({**point, "image": "images/a.png"}) + "\n"
        + json.dumps({**point, "image": "images/b.png"}) + "\n{not json\n")
    return root


def config(raw: Path, server: ChatServer) -> BuildConfig:
    llm = CaptionLLMConfig(base_url=server.url, model="qwen2.5-7b-instruct", retries=1,
                           backoff_s=0.01, timeout_s=10.0)
    return BuildConfig(raw_dir=str(raw), name="caption-failures",
                       speech=SpeechConfig(qc=QCConfig(min_speech_s=5.0, min_words=5),
                                           device="cpu"),
                       captions=CaptionConfig(method="llm", llm=llm),
                       shards=ShardConfig(max_samples=1))


def _down(server: ChatServer) -> None:
    """Every request answered 503 (far more answers than a build asks for)."""
    server.requests.clear()
    server.script = [("status", 503)] * 100


@pytest.fixture(scope="module")
def server():
    s = ChatServer()
    yield s
    s.close()


@pytest.fixture(scope="module")
def beam_build(tmp_path_factory, server) -> Path:
    from pipelines.beam import graph as beam
    root = tmp_path_factory.mktemp("beam")
    _down(server)
    beam.run(config(make_raw(root / "raw"), server), str(root / "out"))
    assert len(server.requests) == 2  # one caption, tried twice
    return root / "out"


def _samples(out: Path) -> dict[str, dict]:
    return {s.json["image"]["source"]: s.json for s in iter_samples(out)}


def test_failed_caption_is_recorded_in_the_sample_and_counted(beam_build):
    assert verify(beam_build) == []
    samples = _samples(beam_build)
    a, b = samples["images/a.png"], samples["images/b.png"]
    assert [t["session_id"] for t in a["transcripts"]] == ["s-1"]  # the transcript is kept
    assert a["captions"] == [] and a["failures"] == [FAILURE]
    assert "failures" not in b  # a complete sample has no failures field
    description = read_dataset_json(beam_build / "dataset.json")
    assert description["counts"]["failures"] == 1
    assert description["failures_by_reason"] == {"caption_failed": 1}
    assert description["ledger"] == LEDGER  # the session is accepted, not rejected
    assert all(e["read"] == e["accepted"] + e["rejected"] for e in description["ledger"])
    rejects = read_rejects(beam_build / "rejects.parquet")
    assert [(r["source"], r["record"], r["reason"]) for r in rejects] == [
        ("points.jsonl", "3", "invalid_record")]


def test_inspect_and_report_count_the_failure(beam_build, tmp_path, capsys):
    assert summarize(beam_build).failures_by_reason == {"caption_failed": 1}
    assert main(["inspect", str(beam_build)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^failed\s+samples$", out, re.M)
    assert re.search(r"^caption_failed\s+1$", out, re.M)
    page = write_report(beam_build, tmp_path / "report.html").read_text()
    assert "<h2>Failures by reason</h2>" in page
    assert '<td>caption_failed</td><td class="n">1</td>' in page
    assert ("<td>caption</td><td>caption_failed</td><td>HTTP 503 after 1 retries</td>"
            "<td>s-1</td>") in page
    assert '<tr><td>failures</td><td class="n">1</td></tr>' in page  # dataset.json counts


def test_validate_catches_a_wrong_failure_count(beam_build, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(beam_build, out)
    description = json.loads((out / "dataset.json").read_text())
    description["counts"]["failures"] = 0
    (out / "dataset.json").write_text(json.dumps(description))
    assert verify(out) == ["dataset.json: counts.failures 0, samples record 1"]


def test_ray_build_records_the_same_failure(beam_build, tmp_path, server, ray_session):
    from pipelines import ray as ray_engine

    _down(server)
    ray_engine.run(config(make_raw(tmp_path / "raw"), server), str(tmp_path / "out"))
    out = tmp_path / "out"
    assert verify(out) == []
    assert _samples(out)["images/a.png"]["failures"] == [FAILURE]
    ours, theirs = (read_dataset_json(d / "dataset.json") for d in (out, beam_build))
    for field in ("counts", "failures_by_reason", "ledger", "rejects_by_reason"):
        assert ours[field] == theirs[field]
    tars = [sorted((d / "shards").glob("*.tar")) for d in (out, beam_build)]
    assert [p.read_bytes() for p in tars[0]] == [p.read_bytes() for p in tars[1]]


def test_extend_keeps_the_failure_count(beam_build, tmp_path, server):
    from pipelines.beam import graph as beam
    out = tmp_path / "out"
    shutil.copytree(beam_build, out)
    raw = tmp_path / "more"
    _png(raw / "images/c.png", (10, 10, 200))
    (raw / "points.jsonl").write_text(json.dumps(
        {"image": "images/c.png", "label": "square", "points": [], "units": "percent",
         "annotator": "p2"}) + "\n")
    beam.run(config(raw, server), str(out), mode="extend")  # the base's config: no audio here
    assert verify(out) == []  # counts.failures agrees with the samples
    description = read_dataset_json(out / "dataset.json")
    assert description["counts"]["samples"] == 3
    assert description["failures_by_reason"] == {"caption_failed": 1}


def test_rerun_with_the_endpoint_back_writes_the_caption(beam_build, tmp_path, server):
    from pipelines.beam import graph as beam
    out = tmp_path / "out"
    shutil.copytree(beam_build, out)
    server.requests.clear()
    server.script = [("ok", "A red square.")]
    raw = Path(read_dataset_json(out / "dataset.json")["build_config"]["raw_dir"])
    beam.run(config(raw, server), str(out))
    assert verify(out) == []
    a = _samples(out)["images/a.png"]
    assert "failures" not in a
    (caption,) = a["captions"]
    assert caption == {"text": "A red square.", "method": "llm", "model": "qwen2.5-7b-instruct",
                       "session_ids": ["s-1"], "prompt": caption["prompt"],
                       "sampling": {"temperature": 0.0, "max_tokens": 600}}
    assert caption["prompt"].startswith("clean:")
    description = read_dataset_json(out / "dataset.json")
    assert description["counts"]["failures"] == 0 and description["failures_by_reason"] == {}
    assert description["ledger"] == LEDGER


def test_failure_reasons_are_reject_reasons():
    """One closed set of reason codes: a sample's failure names one of them."""
    from pixmo.rejects import Reason
    from pixmo.schema import load_schema

    reasons = load_schema("sample")["$defs"]["failure"]["properties"]["reason"]["enum"]
    assert set(reasons) <= {r.value for r in Reason}
