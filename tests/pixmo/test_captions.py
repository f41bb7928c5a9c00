"""Caption writing: the deterministic clean-up on spoken-language artefacts,
merging several transcripts, and the LLM writer against a real HTTP server on
127.0.0.1 that speaks the OpenAI chat-completions protocol."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import fastjsonschema
import pytest

from pixmo.captions import (
    CaptionConfig,
    CaptionFailure,
    CaptionLLMConfig,
    CaptionWriter,
    clean_transcript,
    merge_transcripts,
    split_sentences,
)
from pixmo.errors import PixmoError
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
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append({"path": self.path, "body": body,
                                        "auth": self.headers.get("Authorization")})
                action = server.script.pop(0) if server.script else ("ok", "A default caption.")
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


def test_llm_clean_prompt_for_one_transcript(server, caption_schema):
    server.script = [("ok", "  A sunny kitchen with a wooden table.  ")]
    writer = llm_writer(server, api_key="sk-local", system_prompt="You write captions.")
    caption = writer([{"text": "um a sunny kitchen", "session_id": "s-1"}])
    record = caption.to_record()
    caption_schema(record)
    assert record == {"text": "A sunny kitchen with a wooden table.", "method": "llm",
                      "model": "qwen2.5-7b-instruct", "session_ids": ["s-1"]}
    (request,) = server.requests
    assert request["path"] == "/v1/chat/completions" and request["auth"] == "Bearer sk-local"
    body = request["body"]
    assert body["model"] == "qwen2.5-7b-instruct" and body["temperature"] == 0.0
    assert body["messages"][0] == {"role": "system", "content": "You write captions."}
    assert body["messages"][1]["role"] == "user"
    assert body["messages"][1]["content"].endswith("Transcript:\num a sunny kitchen")


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


def test_llm_client_errors_are_not_retried(server):
    server.script = [("status", 401)]
    with pytest.raises(PixmoError, match=r"/v1/chat/completions: chat endpoint answered HTTP 401"):
        llm_writer(server, [])([{"text": "a red car"}])
    server.script = [("raw", b"<html>not json</html>")]
    with pytest.raises(PixmoError, match="reply is not a chat completion"):
        llm_writer(server, [])([{"text": "a red car"}])
    assert len(server.requests) == 2


def test_llm_oversized_reply_is_refused_without_retry(server):
    server.script = [("ok", "x" * 5000)]
    with pytest.raises(PixmoError, match="body of 5[0-9]{3} bytes exceeds max_bytes 1000"):
        llm_writer(server, [], max_response_bytes=1000)([{"text": "a red car"}])
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
