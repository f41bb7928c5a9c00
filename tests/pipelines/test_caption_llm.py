"""Captions from a language model in whole builds, from the command line and a config file,
on both engines: a chat endpoint (a real server on 127.0.0.1) asked concurrently, and a tiny
random causal LM run in the workers (``hf:DIR``). Same bytes on Beam and Ray; a re-run asks
nothing and rewrites nothing; another prompt is refused on resume and re-captions on
overwrite."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import fastjsonschema
import pytest

from pipelines.cli import main
from pixmo.dataset.reader import iter_samples
from pixmo.dataset.verify import verify
from pixmo.schema import load_schema
from tests.one_line import assert_one_line
from tests.paths import SPEECH
from tests.pipelines.conftest import assert_same_build
from tests.pixmo.test_captions import ChatServer
from tests.pixmo.test_llm import make_tiny_lm

CONFIG = """\
speech: {device: cpu, qc: {min_speech_s: 5, min_words: 5}}
shards: {max_samples: 1}
captions: {llm: {retries: 0, max_tokens: 12}}
"""


def make_raw(root: Path) -> Path:
    """Image a has one spoken description (the clean prompt), b two (the merge prompt)."""
    from PIL import Image

    (root / "images").mkdir(parents=True)
    (root / "audio").mkdir()
    for name, colour in (("a", (200, 10, 10)), ("b", (10, 200, 10))):
        Image.new("RGB", (64, 48), colour).save(root / f"images/{name}.png")
    shutil.copy(SPEECH / "kitchen.opus", root / "audio/kitchen.opus")
    shutil.copy(SPEECH / "desk.flac", root / "audio/desk.flac")
    sessions = [("a", "kitchen.opus", "s-1"), ("b", "kitchen.opus", "s-2"),
                ("b", "desk.flac", "s-3")]
    (root / "captions.jsonl").write_text("".join(json.dumps(
        {"image": f"images/{image}.png", "audio": f"audio/{audio}", "annotator": session,
         "session_id": session}) + "\n" for image, audio, session in sessions))
    (root / "build.yaml").write_text(CONFIG)
    return root


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    return make_raw(tmp_path_factory.mktemp("raw"))


@pytest.fixture(scope="module")
def server():
    s = ChatServer()
    s.echo = True
    yield s
    s.close()


def build(raw: Path, out: Path, *extra: str) -> int:
    return main(["build", "--config", str(raw / "build.yaml"), "--raw", str(raw), "--out",
                 str(out), *extra])


def captions(out: Path) -> dict[str, dict]:
    return {s.json["image"]["source"]: s.json["captions"][0] for s in iter_samples(out)}


def tars(out: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in (out / "shards").glob("*.tar")}


@pytest.fixture(scope="module")
def endpoint_build(raw, server, tmp_path_factory) -> Path:
    """Both images' requests must be in flight together to be answered."""
    out = tmp_path_factory.mktemp("endpoint") / "out"
    server.barrier = threading.Barrier(2, timeout=30)
    try:
        assert build(raw, out, "--caption-llm", server.url, "--caption-model", "m",
                     "--caption-concurrency", "2", "--direct_running_mode=in_memory") == 0
    finally:
        server.barrier = None
    assert len(server.requests) == 2 and server.most_in_flight == 2
    return out


def test_an_endpoint_captions_each_image_with_its_provenance(endpoint_build):
    validate = fastjsonschema.compile(load_schema("sample"))
    for sample in iter_samples(endpoint_build):
        validate(sample.json)
    a, b = captions(endpoint_build)["images/a.png"], captions(endpoint_build)["images/b.png"]
    assert a["method"] == b["method"] == "llm" and a["model"] == b["model"] == "m"
    assert a["text"].startswith("Caption of: ") and a["session_ids"] == ["s-1"]
    assert b["text"].startswith("Caption of: ") and b["session_ids"] == ["s-2", "s-3"]
    assert (a["prompt"][:6], b["prompt"][:6]) == ("clean:", "merge:")
    assert a["sampling"] == {"temperature": 0.0, "max_tokens": 12}
    recorded = json.loads((endpoint_build / "dataset.json").read_text())["build_config"]
    assert recorded["captions"]["llm"]["base_url"].startswith("http://127.0.0.1")
    assert recorded["captions"]["llm"]["api_key_env"] == "PIXMO_CAPTION_API_KEY"


def test_a_rerun_asks_nothing_and_rewrites_nothing(endpoint_build, server, capsys):
    server.requests.clear()
    before = tars(endpoint_build)
    assert build(_raw_of(endpoint_build), endpoint_build, "--caption-llm", server.url,
                 "--caption-model", "m", "--caption-concurrency", "2") == 0
    assert server.requests == [] and tars(endpoint_build) == before


def _raw_of(out: Path) -> Path:
    return Path(json.loads((out / "dataset.json").read_text())["build_config"]["raw_dir"])


def test_ray_writes_the_same_bytes(endpoint_build, server, tmp_path, ray_session):
    out = tmp_path / "ray"
    assert build(_raw_of(endpoint_build), out, "--engine", "ray", "--caption-llm", server.url,
                 "--caption-model", "m") == 0
    assert_same_build(out, endpoint_build)


def test_another_prompt_is_refused_on_resume_and_recaptions_on_overwrite(
        endpoint_build, server, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(endpoint_build, out)
    prompt = tmp_path / "merge.txt"
    prompt.write_text("Merge these, briefly:\n{transcripts}")
    argv = ["--caption-llm", server.url, "--caption-model", "m", "--caption-merge-prompt",
            str(prompt)]
    capsys.readouterr()
    assert build(_raw_of(out), out, *argv) == 2
    assert_one_line(capsys.readouterr().err, "pixmo", "build",
                    "was built with another config (captions.llm.merge_prompt differ)")
    server.requests.clear()
    assert build(_raw_of(out), out, *argv, "--mode", "overwrite") == 0
    assert len(server.requests) == 1  # image b's merge; a's clean request is cached
    old, new = captions(endpoint_build), captions(out)
    assert new["images/a.png"] == old["images/a.png"]
    assert new["images/b.png"]["prompt"] != old["images/b.png"]["prompt"]


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory) -> Path:
    return make_tiny_lm(tmp_path_factory.mktemp("models") / "tiny-qwen")


def test_a_local_model_in_the_workers_same_bytes_on_both_engines(raw, tiny_lm, tmp_path,
                                                                  ray_session):
    beam, ray = tmp_path / "beam", tmp_path / "ray"
    argv = ["--caption-llm", f"hf:{tiny_lm}", "--caption-concurrency", "2"]
    assert build(raw, beam, *argv, "--direct_running_mode=in_memory") == 0
    assert build(raw, ray, *argv, "--engine", "ray") == 0
    assert_same_build(ray, beam)
    caption = captions(beam)["images/b.png"]
    assert caption["model"].startswith("hf:tiny-qwen@") and len(caption["model"]) == 29
    assert caption["prompt"].startswith("merge:") and caption["text"]
    cached = sorted((beam / "caption_cache").glob("*/*.json"))
    assert len(cached) == 2
    before = tars(beam)
    assert build(raw, beam, *argv) == 0  # the model's replies come from the cache
    assert tars(beam) == before and sorted((beam / "caption_cache").glob("*/*.json")) == cached


@pytest.mark.parametrize("reply", [("raw", b"<html>busy</html>"), ("ok", "x" * 3000)],
                         ids=["malformed", "oversized"])
def test_bad_replies_are_failures_and_a_rerun_captions(raw, server, tmp_path, reply):
    """A reply that is no chat completion, or too large, fails that caption with its reason;
    the build finishes, and a re-run with the endpoint well asks again (failures are not
    cached)."""
    out, config = tmp_path / "out", tmp_path / "build.yaml"
    config.write_text(CONFIG.replace("max_tokens: 12", "max_tokens: 12, "
                                     "max_response_bytes: 2000"))
    argv = ["build", "--config", str(config), "--raw", str(raw), "--out", str(out),
            "--caption-llm", server.url, "--caption-model", "m"]
    server.script = [reply, reply]
    server.requests.clear()
    assert main(argv) == 0
    assert verify(out) == [] and len(server.requests) == 2
    details = {s.json["failures"][0]["detail"] for s in iter_samples(out)}
    assert details == ({"reply is not a chat completion: b'<html>busy</html>'"}
                       if reply[0] == "raw" else {"body of 3164 bytes exceeds max_bytes 2000"})
    assert json.loads((out / "dataset.json").read_text())["failures_by_reason"] == {
        "caption_failed": 2}
    assert main(argv) == 0 and len(server.requests) == 4
    assert all(s.json["captions"] and "failures" not in s.json for s in iter_samples(out))
