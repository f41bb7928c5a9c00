"""Bounded requests (GET downloads, POSTs) against a real HTTP server on 127.0.0.1.

Waits between retries go to a recording ``sleep``, so the tests assert them
instead of waiting."""

from __future__ import annotations

import email.utils
import socket
import time

import pytest

from pixmo.errors import PixmoError
from pixmo.fetch import (
    FetchConfig,
    FetchError,
    _by_host_round_robin,
    backoff_delay,
    fetch_bytes,
    fetch_many,
)
from tests.http_server import HOLD_S, LocalServer, Reply

# the timeout is long because no test using FAST waits for it: on a busy machine a short
# one would turn a late reply into a retry and change the hit counts
FAST = FetchConfig(timeout_s=30.0, retries=2, backoff_base_s=0.5, backoff_cap_s=0.75,
                   retry_after_cap_s=5.0, max_bytes=4096)
BODY = bytes(range(256)) * 4


@pytest.fixture
def server():
    with LocalServer() as srv:
        yield srv


@pytest.fixture
def sleeps():
    """The waits a request asked for, in order."""
    return []


def test_ok_returns_the_exact_body(server):
    url = server.route("/a.jpg", Reply(body=BODY))
    assert fetch_bytes(url, FAST) == BODY
    server.wait_idle()  # the client can hold the whole body before the server counts it
    assert server.hits["/a.jpg"] == 1 and server.completed["/a.jpg"] == 1


def test_not_found_is_final_and_not_retried(server):
    url = server.route("/gone.jpg", Reply(404, b"no"))
    with pytest.raises(FetchError) as info:
        fetch_bytes(url, FAST)
    assert info.value.status == 404
    assert info.value.retryable is False
    assert "HTTP 404" in str(info.value) and url in str(info.value)
    assert isinstance(info.value, PixmoError)
    assert server.hits["/gone.jpg"] == 1


def test_429_with_retry_after_is_retried_and_the_wait_capped(server, sleeps):
    url = server.route("/busy.jpg", Reply(429, headers={"Retry-After": "3600"}),
                       Reply(429, headers={"Retry-After": "2"}), Reply(body=BODY))
    assert fetch_bytes(url, FAST, sleep=sleeps.append) == BODY
    assert server.hits["/busy.jpg"] == 3
    assert sleeps == [5.0, 2.0]  # an hour cut to retry_after_cap_s; two seconds obeyed


def test_server_errors_are_retried_with_backoff_then_reported_as_retryable(server, sleeps):
    url = server.route("/down.jpg", Reply(503, b"down"))
    with pytest.raises(FetchError) as info:
        fetch_bytes(url, FAST, sleep=sleeps.append)
    assert info.value.status == 503 and info.value.retryable is True
    assert server.hits["/down.jpg"] == FAST.retries + 1
    assert sleeps == [0.5, 0.75]  # base, then twice the base cut to the cap


def test_request_timeout_is_retried(server, sleeps):
    url = server.route("/408.jpg", Reply(408), Reply(body=b"ok"))
    assert fetch_bytes(url, FAST, sleep=sleeps.append) == b"ok"
    assert sleeps == [0.5]


def test_backoff_is_exponential_capped_and_retry_after_is_cut():
    cfg = FetchConfig(backoff_base_s=0.5, backoff_cap_s=3.0, retry_after_cap_s=10.0)
    assert [backoff_delay(a, cfg) for a in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert backoff_delay(0, cfg, retry_after=4.0) == 4.0
    assert backoff_delay(0, cfg, retry_after=86400.0) == 10.0


def test_retry_after_as_an_http_date_in_days_is_cut_to_the_cap(server, sleeps):
    later = email.utils.formatdate(time.time() + 3 * 86400, usegmt=True)
    url = server.route("/date.jpg", Reply(503, headers={"Retry-After": later}), Reply(body=b"x"))
    assert fetch_bytes(url, FAST, sleep=sleeps.append) == b"x"
    assert server.hits["/date.jpg"] == 2 and sleeps == [FAST.retry_after_cap_s]


def test_slow_headers_time_out(server):
    url = server.route("/slow.jpg", Reply(body=BODY, held=True))
    cfg = FetchConfig(timeout_s=0.3, retries=0)
    with pytest.raises(FetchError, match=r"timed out after 0.3s") as info:
        fetch_bytes(url, cfg)
    assert info.value.retryable is True


def test_a_dripping_body_hits_the_total_deadline(server):
    # each byte arrives well within a per-read timeout; the whole body takes 20 s
    url = server.route("/drip.jpg", Reply(body=b"x" * 2000, drip_s=0.01))
    cfg = FetchConfig(timeout_s=0.4, retries=0)
    with pytest.raises(FetchError, match="timed out"):
        fetch_bytes(url, cfg)
    server.wait_idle()
    assert server.completed["/drip.jpg"] == 0  # the client hung up mid-body


def test_truncated_body_is_a_retryable_failure(server, sleeps):
    url = server.route("/cut.jpg", Reply(body=b"0123456789", content_length=1000))
    with pytest.raises(FetchError, match="truncated body: got 10 of 1000 bytes") as info:
        fetch_bytes(url, FAST, sleep=sleeps.append)
    assert info.value.retryable is True
    assert server.hits["/cut.jpg"] == FAST.retries + 1


def test_announced_oversize_body_is_refused_without_retry(server):
    url = server.route("/big.jpg", Reply(body=b"x" * 5000))
    with pytest.raises(FetchError, match="body of 5000 bytes exceeds max_bytes 4096") as info:
        fetch_bytes(url, FAST)
    assert info.value.retryable is False
    assert server.hits["/big.jpg"] == 1


def test_unannounced_oversize_body_is_refused_while_streaming(server):
    url = server.route("/big2.jpg", Reply(body=b"x" * 200_000, send_length=False))
    with pytest.raises(FetchError, match="body exceeds max_bytes 4096"):
        fetch_bytes(url, FAST)


def test_body_without_length_is_read_to_the_end(server):
    url = server.route("/nolen.jpg", Reply(body=BODY, send_length=False))
    assert fetch_bytes(url, FAST) == BODY


def test_redirects_are_followed(server):
    server.route("/final.jpg", Reply(body=BODY))
    url = server.route("/moved.jpg", Reply(301, headers={"Location": "/final.jpg"}))
    assert fetch_bytes(url, FAST) == BODY
    assert server.hits["/final.jpg"] == 1


def test_redirect_loops_are_refused(server):
    server.route("/b", Reply(302, headers={"Location": "/a"}))
    url = server.route("/a", Reply(302, headers={"Location": "/b"}))
    with pytest.raises(FetchError, match="redirect loop") as info:
        fetch_bytes(url, FAST)
    assert info.value.retryable is False
    assert server.hits["/a"] == 1 and server.hits["/b"] == 1


def test_redirect_chains_longer_than_the_cap_are_refused(server):
    for i in range(5):
        server.route(f"/r{i}", Reply(302, headers={"Location": f"/r{i + 1}"}))
    server.route("/r5", Reply(body=b"end"))
    with pytest.raises(FetchError, match="more than 3 redirects"):
        fetch_bytes(server.url("/r0"), FetchConfig(max_redirects=3, retries=0))
    assert fetch_bytes(server.url("/r0"), FetchConfig(max_redirects=5, retries=0)) == b"end"


def test_redirect_to_a_local_file_is_refused(server):
    url = server.route("/evil", Reply(302, headers={"Location": "file:///etc/passwd"}))
    with pytest.raises(FetchError, match="scheme 'file' is not fetched"):
        fetch_bytes(url, FAST)


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/x.jpg", "pipe:cat x",
                                 "/etc/passwd", "gs://bucket/x.jpg"])
def test_only_http_and_https_are_fetched(url):
    with pytest.raises(FetchError, match="is not fetched") as info:
        fetch_bytes(url, FAST)
    assert info.value.retryable is False


def test_non_ascii_and_spaces_are_percent_encoded_so_no_header_can_be_injected(server):
    server.route("/caf%C3%A9%20x.jpg", Reply(body=b"cafe"))
    assert fetch_bytes(server.base + "/café x.jpg", FAST) == b"cafe"
    # urlsplit drops CR and LF; what is left is one encoded request line
    server.route("/aX-Evil:%201", Reply(body=b"safe"))
    assert fetch_bytes(server.base + "/a\r\nX-Evil: 1", FAST) == b"safe"


def test_connection_refused_is_retryable(sleeps):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(FetchError, match="connection failed") as info:
        fetch_bytes(f"http://127.0.0.1:{port}/x.jpg", FetchConfig(retries=1), sleep=sleeps.append)
    assert info.value.retryable is True and sleeps == [1.0]


def test_post_sends_its_body_and_headers_on_every_attempt(server, sleeps):
    url = server.route("/v1/chat", Reply(500), Reply(body=b'{"ok": 1}'))
    answer = fetch_bytes(url, FAST, data=b'{"q": 1}', sleep=sleeps.append,
                         headers={"Content-Type": "application/json", "Authorization": "k"})
    assert answer == b'{"ok": 1}' and sleeps == [0.5]
    assert [(r.method, r.path, r.body) for r in server.received] == [
        ("POST", "/v1/chat", b'{"q": 1}')] * 2
    headers = server.received[0].headers
    assert headers["Authorization"] == "k" and headers["Content-Type"] == "application/json"
    assert headers["Content-Length"] == "8" and headers["User-Agent"] == FAST.user_agent


def test_post_redirects_keep_or_drop_the_body_as_http_says(server):
    server.route("/new", Reply(body=b"done"))
    kept = server.route("/307", Reply(307, headers={"Location": "/new"}))
    assert fetch_bytes(kept, FAST, data=b"body", headers={"Authorization": "k"}) == b"done"
    dropped = server.route("/303", Reply(303, headers={"Location": "/new"}))
    assert fetch_bytes(dropped, FAST, data=b"body", headers={"Authorization": "k"}) == b"done"
    assert [(r.method, r.path, r.body, r.headers.get("Authorization"))
            for r in server.received] == [("POST", "/307", b"body", "k"),
                                          ("POST", "/new", b"body", "k"),
                                          ("POST", "/303", b"body", "k"),
                                          ("GET", "/new", b"", "k")]


def test_credentials_are_not_sent_to_another_origin(server):
    with LocalServer() as other:
        target = other.route("/elsewhere", Reply(body=b"x"))
        url = server.route("/hop", Reply(307, headers={"Location": target}))
        assert fetch_bytes(url, FAST, data=b"body", headers={"Authorization": "k"}) == b"x"
        (seen,) = other.received
        assert seen.body == b"body" and "Authorization" not in seen.headers


def test_fetch_many_returns_each_url_once_with_bytes_or_error(server):
    ok = [server.route(f"/ok{i}.jpg", Reply(body=bytes([i]) * 10)) for i in range(5)]
    bad = server.route("/missing.jpg", Reply(404))
    results = dict(fetch_many([*ok, bad, ok[0]], FAST, workers=3))
    assert sorted(results) == sorted([*ok, bad])
    for i, url in enumerate(ok):
        assert results[url] == bytes([i]) * 10
    assert isinstance(results[bad], FetchError) and results[bad].status == 404
    assert server.hits["/ok0.jpg"] == 1  # duplicates are fetched once


def test_urls_are_interleaved_by_host():
    urls = ["http://a/1", "http://a/2", "http://a/3", "http://b/1", "https://c/1", "http://B/2"]
    assert _by_host_round_robin(urls) == [
        "http://a/1", "http://b/1", "https://c/1", "http://a/2", "http://B/2", "http://a/3"]


def test_per_host_concurrency_bounds_a_thread_pool(server):
    # no reply goes out before two requests have waited at once: proof that two run in
    # parallel (one at a time, the first reply would wait HOLD_S); the count of waiting
    # requests never exceeds what the client holds open, so more than two is its fault
    urls = [server.route(f"/h{i}.jpg", Reply(body=b"x", together=2)) for i in range(8)]
    cfg = FetchConfig(per_host_concurrency=2, timeout_s=HOLD_S / 2, retries=0)
    results = dict(fetch_many(urls, cfg, workers=8))
    assert all(results[url] == b"x" for url in urls)
    assert server.max_waiting == 2


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"timeout_s": 0}, "FetchConfig.timeout_s must be a finite number > 0, got 0"),
    ({"timeout_s": float("inf")}, "FetchConfig.timeout_s must be a finite number > 0, got inf"),
    ({"backoff_base_s": float("nan")}, "FetchConfig.backoff_base_s must be a finite number >= 0"),
    ({"max_bytes": 0}, "FetchConfig.max_bytes must be >= 1, got 0"),
    ({"retries": -1}, "FetchConfig.retries must be >= 0, got -1"),
    ({"per_host_concurrency": 0}, "FetchConfig.per_host_concurrency must be >= 1, got 0"),
    ({"user_agent": "a\r\nX-Evil: 1"}, "FetchConfig.user_agent must be one non-empty line"),
])
def test_config_errors_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FetchConfig(**kwargs)
