"""Caption writing: the deterministic clean-up on spoken-language artefacts,
merging several transcripts, and the LLM writer against a real HTTP server on
127.0.0.1 that speaks the OpenAI chat-completions protocol."""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import fastjsonschema
import pytest

from pixmo.captions import (
    CLEAN_PROMPT,
    Caption,
    CaptionConfig,
    CaptionFailure,
    CaptionLLMConfig,
    CaptionWriter,
    clean_transcript,
    merge_transcripts,
    split_sentences,
)
from pixmo.config import to_plain
from pixmo.rejects import Reason
from pixmo.schema import load_schema
from tests.paths import SPEECH

SCRIPTS = json.loads((SPEECH / "scripts.json").read_text())
HOLD_S = 60.0  # how long ChatServer holds a "held" answer; no client here waits that long


def _def_schema(name: str):
    sample = load_schema("sample")
    return fastjsonschema.compile({"$defs": sample["$defs"], **sample["$defs"][name]})


@pytest.fixture(scope="module")
def caption_schema():
    return _def_schema("caption")


@pytest.fixture(scope="module")
def failure_schema():
    return _def_schema("failure")


@pytest.mark.parametrize(
    "spoken,clean",
    [
        ("um so this is a, uh, photo of a kitchen", "So this is a photo of a kitchen."),
        ("there's a ki- kitchen table", "There's a kitchen table."),
        ("two two cats sit on the the table", "Two cats sit on the table."),
        ("it's, um, it's cloudy and... and grey", "It's cloudy and grey."),
        ("there is a, there are two cats", "There are two cats."),
        ("I see a... I see three red cars", "I see three red cars."),
        ("the dog is brown, you know, and i think it's old",
         "The dog is brown, and I think it's old."),
        ("I mean, the sky is blue. you know", "The sky is blue."),
        ("uh-huh the wall is white , mm-hmm", "The wall is white."),
        ("on the left, on the right there are trees", "On the left, on the right there are trees."),
        ("a cat, um, a dog and, uh, a bird", "A cat, a dog and a bird."),
        ("the sign says open.It is red,not blue", "The sign says open. It is red, not blue."),
        ("the sign says example.com and 3.5 percent", "The sign says example.com and 3.5 percent."),
        ("Um. Uh.", ""),
    ],
)
def test_clean_transcript(spoken, clean):
    assert clean_transcript(spoken) == clean


def test_clean_transcript_keeps_clean_text_unchanged():
    for clip in SCRIPTS:
        if clip["language"] == "en" and clip["file"] != "loop.opus":
            assert clean_transcript(clip["text"]) == clip["text"]


def test_fillers_are_configurable():
    cfg = CaptionConfig(fillers=("basically",), filler_phrases=())
    assert clean_transcript("basically, um, a red car", cfg) == "Um, a red car."


def test_merge_transcripts_drops_repeated_sentences():
    merged = merge_transcripts([
        "The image shows a busy street at night. Um, a red bus is stopped at the corner.",
        "This image shows a busy street at night. There are two people waiting. "
        "A red bus is stopped at the corner!",
        "There is a blue car.",
    ])
    assert split_sentences(merged) == [
        "The image shows a busy street at night.",
        "A red bus is stopped at the corner.",
        "There are two people waiting.",
        "There is a blue car.",
    ]


def test_cleanup_writer_one_and_several_transcripts(caption_schema):
    writer = CaptionWriter()
    one = writer([{"text": "um a red, a red car", "session_id": "s-1"}])
    assert one.to_record() == {"text": "A red car.", "method": "cleanup", "session_ids": ["s-1"]}
    texts = [{"text": c["text"], "session_id": c["file"]} for c in SCRIPTS[:3]]
    three = writer(texts + [texts[0]])  # a duplicate session adds nothing
    record = three.to_record()
    caption_schema(record)
    assert record["text"] == " ".join(c["text"] for c in SCRIPTS[:3])
    assert record["session_ids"] == [c["file"] for c in SCRIPTS[:3]] + [SCRIPTS[0]["file"]]


def test_cleanup_writer_fails_when_nothing_is_left(failure_schema):
    writer = CaptionWriter()
    assert writer([]) == CaptionFailure(Reason.CAPTION_FAILED, "no transcript text")
    failure = writer([{"text": "um, uh", "session_id": "s-1"}])
    assert failure.to_record() == {"stage": "caption", "reason": "caption_failed",
                                   "detail": "caption is empty", "session_ids": ["s-1"]}
    failure_schema(failure.to_record())


# ------------------------------------------------------------ LLM writer


class ChatServer:
    """A chat-completions endpoint on 127.0.0.1. ``script`` lists what the
    next requests get: ``("ok", text)``, ``("status", code)``,
    ``("held", text)`` or ``("raw", bytes)``; once it is used up, every
    request gets ``("ok", "A default caption.")``. A held request is answered
    with ``text`` only when the server closes, or after ``HOLD_S``: a client
    that waits for it instead of timing out gets ``text``, late."""

    def __init__(self) -> None:
        self.script: list[tuple] = []
        self.requests: list[dict] = []
        self.release = threading.Event()
        self.barrier: threading.Barrier | None = None  # answers wait until its parties do
        self.echo = False  # once the script is used up: "Caption of: " and the prompt's last line
        self.in_flight = self.most_in_flight = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append({"path": self.path, "body": body,
                                        "auth": self.headers.get("Authorization")})
                if server.script:
                    action = server.script.pop(0)
                elif server.echo:
                    prompt = body["messages"][-1]["content"]
                    action = ("ok", "Caption of: " + prompt.splitlines()[-1])
                else:
                    action = ("ok", "A default caption.")
                with server.lock:
                    server.in_flight += 1
                    server.most_in_flight = max(server.most_in_flight, server.in_flight)
                try:
                    if server.barrier is not None:
                        server.barrier.wait()
                    self.answer(action, body)
                finally:
                    with server.lock:
                        server.in_flight -= 1

            def answer(self, action: tuple, body: dict) -> None:
                if action[0] == "status":
                    self.send_error(action[1])
                    return
                if action[0] == "held":
                    server.release.wait(HOLD_S)
                    action = ("ok", action[1])
                if action[0] == "raw":
                    payload = action[1]
                else:
                    payload = json.dumps({
                        "id": "chatcmpl-1", "object": "chat.completion", "model": body["model"],
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": action[1]}}],
                    }).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = ChatServer()
    yield s
    s.close()


def llm_writer(server: ChatServer, sleeps: list[float] | None = None, **fields) -> CaptionWriter:
    llm = CaptionLLMConfig(**{"base_url": server.url, "model": "qwen2.5-7b-instruct",
                       "backoff_s": 0.5, **fields})
    return CaptionWriter(CaptionConfig(method="llm", llm=llm),
                         sleep=(sleeps.append if sleeps is not None else time.sleep))


def test_llm_clean_prompt_for_one_transcript(server, caption_schema, monkeypatch):
    server.script = [("ok", "  A sunny kitchen with a wooden table.  ")]
    monkeypatch.setenv("MY_KEY", "sk-local")
    writer = llm_writer(server, api_key_env="MY_KEY", system_prompt="You write captions.")
    caption = writer([{"text": "um a sunny kitchen", "session_id": "s-1"}])
    record = caption.to_record()
    caption_schema(record)
    version = hashlib.sha256(json.dumps(["You write captions.", CLEAN_PROMPT]).encode())
    assert record == {"text": "A sunny kitchen with a wooden table.", "method": "llm",
                      "model": "qwen2.5-7b-instruct", "session_ids": ["s-1"],
                      "prompt": f"clean:{version.hexdigest()[:12]}",
                      "sampling": {"temperature": 0.0, "max_tokens": 600}}
    (request,) = server.requests
    assert request["path"] == "/v1/chat/completions" and request["auth"] == "Bearer sk-local"
    body = request["body"]
    assert body["model"] == "qwen2.5-7b-instruct" and body["temperature"] == 0.0
    assert body["messages"][0] == {"role": "system", "content": "You write captions."}
    assert body["messages"][1]["role"] == "user"
    assert body["messages"][1]["content"].endswith("Transcript:\num a sunny kitchen")


def test_the_api_key_is_never_in_the_config(server, monkeypatch):
    """Only the variable's name is a setting (recorded in dataset.json); unset, no header."""
    monkeypatch.delenv("PIXMO_CAPTION_API_KEY", raising=False)
    writer = llm_writer(server)
    assert "sk-" not in json.dumps(to_plain(writer.cfg))
    writer([{"text": "a red car"}])
    monkeypatch.setenv("PIXMO_CAPTION_API_KEY", "sk-env")
    llm_writer(server)([{"text": "a blue bus"}])
    assert [r["auth"] for r in server.requests] == [None, "Bearer sk-env"]


def test_llm_merge_prompt_for_several_transcripts(server):
    writer = llm_writer(server, merge_prompt="Merge these:\n{transcripts}\nEnd.",
                        clean_prompt="Clean: {transcript}")
    writer([{"text": "a red car"}, {"text": "a blue bus"}, {"text": "  "}])
    (request,) = server.requests
    assert request["auth"] is None and len(request["body"]["messages"]) == 1
    assert request["body"]["messages"][0]["content"] == (
        "Merge these:\nTranscript 1:\na red car\n\nTranscript 2:\na blue bus\nEnd.")


def test_llm_retries_after_500_with_backoff(server):
    server.script = [("status", 500), ("status", 503), ("ok", "A red car.")]
    sleeps: list[float] = []
    caption = llm_writer(server, sleeps)([{"text": "a red car"}])
    assert caption.text == "A red car." and len(server.requests) == 3
    assert sleeps == [0.5, 1.0]  # exponential backoff


def test_llm_gives_up_after_the_retries(server):
    server.script = [("status", 500)] * 3
    sleeps: list[float] = []
    result = llm_writer(server, sleeps, retries=2)([{"text": "a red car", "session_id": "s-7"}])
    assert result == CaptionFailure(Reason.CAPTION_FAILED, "HTTP 500 after 2 retries", ("s-7",))
    assert len(server.requests) == 3 and sleeps == [0.5, 1.0]


def test_llm_timeout_then_success(server):
    # a client that waited for the held answer would get "too late"
    server.script = [("held", "too late"), ("ok", "In time.")]
    sleeps: list[float] = []
    writer = llm_writer(server, sleeps, timeout_s=1.0)
    caption = writer([{"text": "a red car"}])
    assert caption.text == "In time." and len(server.requests) == 2 and sleeps == [0.5]


def test_llm_timeouts_become_a_failure(server):
    server.script = [("held", "late")] * 2
    writer = llm_writer(server, [], timeout_s=0.2, retries=1)
    result = writer([{"text": "a red car"}])
    assert result.reason is Reason.CAPTION_FAILED
    assert result.detail.startswith("no answer within 0.2 s") and "after 1 retries" in result.detail
    assert len(server.requests) == 2


def test_llm_client_errors_are_failures_not_retried(server):
    server.script = [("status", 401)]
    failure = llm_writer(server, [])([{"text": "a red car", "session_id": "s-2"}])
    assert failure == CaptionFailure(Reason.CAPTION_FAILED,
                                     "chat endpoint answered HTTP 401 Unauthorized",
                                     ("s-2",))
    server.script = [("raw", b"<html>not json</html>")]
    failure = llm_writer(server, [])([{"text": "a red car"}])
    assert failure.detail == "reply is not a chat completion: b'<html>not json</html>'"
    server.script = [("raw", json.dumps({"choices": [{"message": {"content": 7}}]}).encode())]
    assert llm_writer(server, [])([{"text": "a red car"}]).detail == \
        "reply content is int, not text"
    assert len(server.requests) == 3


def test_llm_oversized_reply_is_a_failure_without_retry(server):
    server.script = [("ok", "x" * 5000)]
    failure = llm_writer(server, [], max_response_bytes=1000)([{"text": "a red car"}])
    assert failure.reason is Reason.CAPTION_FAILED
    assert re.fullmatch(r"body of 5[0-9]{3} bytes exceeds max_bytes 1000", failure.detail)
    assert len(server.requests) == 1


def test_llm_empty_reply_is_a_failure(server):
    server.script = [("ok", "   ")]
    assert llm_writer(server, [])([{"text": "a red car"}]).detail == "caption is empty"


def test_llm_cache_makes_reruns_free(server, tmp_path):
    server.script = [("ok", "A cached caption."), ("ok", "Another caption.")]
    cache = tmp_path / "llm-cache"
    first = llm_writer(server, [], cache_dir=str(cache))([{"text": "a red car"}])
    rerun = llm_writer(server, [], cache_dir=str(cache))([{"text": "a red car"}])
    assert first.text == rerun.text == "A cached caption." and len(server.requests) == 1
    (entry,) = cache.glob("*/*.json")
    assert json.loads(entry.read_text())["request"] == server.requests[0]["body"]
    # another prompt (or model) is another key
    other = llm_writer(server, [], cache_dir=str(cache), clean_prompt="Tidy: {transcript}")
    assert other([{"text": "a red car"}]).text == "Another caption."
    assert len(server.requests) == 2 and len(list(cache.glob("*/*.json"))) == 2
    # failures are not cached
    server.script = [("status", 500)]
    assert llm_writer(server, [], cache_dir=str(cache), retries=0)(
        [{"text": "a blue bus"}]).reason is Reason.CAPTION_FAILED
    assert len(list(cache.glob("*/*.json"))) == 2


def test_llm_config_errors():
    with pytest.raises(ValueError, match=r"clean_prompt must contain \{transcript\}"):
        CaptionLLMConfig(base_url="http://127.0.0.1:1/v1", model="m", clean_prompt="no slot")
    with pytest.raises(ValueError, match="base_url must be http"):
        CaptionLLMConfig(base_url="ftp://host/v1", model="m")
    with pytest.raises(ValueError, match="CaptionConfig.llm is required"):
        CaptionConfig(method="llm")


def test_a_password_in_the_url_is_refused_before_dataset_json_records_it():
    with pytest.raises(ValueError, match=r"base_url must not hold a password \(dataset.json "
                       r"records it\): put the key in \$PIXMO_CAPTION_API_KEY"):
        CaptionLLMConfig(base_url="https://user:sk-secret@api.example.com/v1", model="m")
    assert CaptionLLMConfig(base_url="http://user@127.0.0.1:8000/v1", model="m").model == "m"


@pytest.mark.parametrize(("make", "message"), [
    (lambda: CaptionLLMConfig(base_url="http://h/v1", model="m", timeout_s=0),
     "CaptionLLMConfig.timeout_s must be a finite number > 0, got 0"),
    (lambda: CaptionLLMConfig(base_url="http://h/v1", model="m", retries=-1),
     "CaptionLLMConfig.retries must be >= 0, got -1"),
    (lambda: CaptionLLMConfig(base_url="http://h/v1", model="m", max_response_bytes=0),
     "CaptionLLMConfig.max_response_bytes must be >= 1, got 0"),
    (lambda: CaptionConfig(method="gpt"), r"CaptionConfig.method must be one of \('cleanup'"),
    (lambda: CaptionConfig(duplicate_overlap=0),
     r"CaptionConfig.duplicate_overlap must be in \(0, 1\], got 0"),
    (lambda: CaptionConfig(duplicate_overlap=1.5),
     r"CaptionConfig.duplicate_overlap must be in \(0, 1\], got 1.5"),
])
def test_config_ranges_name_the_field(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_llm_requests_use_the_fetch_limits():
    llm = CaptionLLMConfig(base_url="http://h/v1", model="m", timeout_s=7.0, retries=4,
                           backoff_s=0.25, max_response_bytes=99)
    fetch = llm.fetch
    assert (fetch.timeout_s, fetch.retries, fetch.backoff_base_s, fetch.max_bytes) == (
        7.0, 4, 0.25, 99)


def test_many_images_are_asked_concurrently_in_order(server):
    """Six requests wait at the server until all six are there: only a client with six in
    flight at once (beyond ``pixmo.fetch``'s default of four per host) gets answers."""
    server.echo = True
    server.barrier = threading.Barrier(6, timeout=20)
    llm = CaptionLLMConfig(base_url=server.url, model="m", retries=0)
    writer = CaptionWriter(CaptionConfig(method="llm", llm=llm, concurrency=6))
    images = [[{"text": f"a car number {i}", "session_id": f"s-{i}"}] for i in range(13)]
    images[3] = [{"text": "  "}]  # nothing to ask: 12 requests, two rounds of six
    captions = writer.many(images)
    assert [c.text for c in captions if isinstance(c, Caption)] == [
        f"Caption of: a car number {i}" for i in range(13) if i != 3]
    assert captions[3].detail == "no transcript text"
    assert [c.session_ids for c in captions if isinstance(c, Caption)][:2] == [("s-0",),
                                                                               ("s-1",)]
    assert len(server.requests) == 12 and server.most_in_flight == 6


def test_one_at_a_time_when_concurrency_is_one(server):
    server.echo = True
    llm = CaptionLLMConfig(base_url=server.url, model="m", retries=0)
    writer = CaptionWriter(CaptionConfig(method="llm", llm=llm, concurrency=1))
    writer.many([[{"text": f"car {i}"}] for i in range(5)])
    assert len(server.requests) == 5 and server.most_in_flight == 1


def test_a_change_of_model_or_sampling_asks_again(server, tmp_path):
    cache = str(tmp_path / "cache")
    image = [{"text": "a red car"}, {"text": "a red car on a road"}]
    records = [llm_writer(server, [], cache_dir=cache, **fields)(image).to_record()
               for fields in ({}, {}, {"model": "other"}, {"max_tokens": 50},
                              {"temperature": 0.7}, {"system_prompt": "Be brief."})]
    assert len(server.requests) == 5  # the second is the first's, from the cache
    assert records[0] == records[1]
    assert [r["model"] for r in records[1:3]] == ["qwen2.5-7b-instruct", "other"]
    assert [r["sampling"] for r in records[2:5]] == [
        {"temperature": 0.0, "max_tokens": 600}, {"temperature": 0.0, "max_tokens": 50},
        {"temperature": 0.7, "max_tokens": 600}]
    assert records[0]["prompt"].startswith("merge:")
    assert records[5]["prompt"] != records[0]["prompt"]


def test_hf_config_is_greedy_and_needs_no_model_name():
    llm = CaptionLLMConfig(base_url="hf:/models/tiny")
    assert llm.local == "/models/tiny" and llm.model == ""
    with pytest.raises(ValueError, match="temperature must be 0 for an hf: model"):
        CaptionLLMConfig(base_url="hf:/models/tiny", temperature=0.5)
    with pytest.raises(ValueError, match="model is required for an endpoint"):
        CaptionLLMConfig(base_url="http://h/v1")
    with pytest.raises(ValueError, match="base_url must be http"):
        CaptionLLMConfig(base_url="hf:")
