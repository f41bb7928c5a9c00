"""A real HTTP server on 127.0.0.1 for download tests (no other network).

Each path serves a list of replies, one per request, the last one repeating,
so a test can say "429 first, then 200". GET and POST are answered alike. The
server counts requests per path and keeps what each one sent, and a test can
change the replies between runs (a host that comes back).

Slowness that a test relies on is made with events, not with the machine's
speed: a ``held`` reply is sent only when the server closes, so the client's
timeout always fires first, and ``together`` holds replies until that many
requests wait at once. A hold ends after ``HOLD_S`` at the latest, so a
client that misbehaves fails its test instead of hanging it.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOLD_S = 60.0  # the longest a reply is held; no client in the tests waits that long


@dataclass(frozen=True)
class Reply:
    """One response: status, headers, body, and how to misbehave."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    latency_s: float = 0.0  # sleep before answering: a distant host, for benchmarks only
    drip_s: float = 0.0  # sleep between body bytes (a slow body)
    held: bool = False  # send nothing until the server closes (a reply that never comes)
    together: int = 0  # send nothing until this many requests have waited at once
    content_length: int | None = None  # announce this length instead of len(body)
    send_length: bool = True  # False: no Content-Length, body ends when the connection closes


@dataclass(frozen=True)
class Received:
    """One request as the server saw it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class LocalServer:
    """``with LocalServer() as server: server.route("/a.jpg", Reply(body=...))``."""

    def __init__(self) -> None:
        self.routes: dict[str, list[Reply]] = {}
        self.hits: Counter[str] = Counter()
        self.completed: Counter[str] = Counter()  # replies sent to the end
        self.received: list[Received] = []
        self.in_flight = 0  # requests being handled, from arrival to the end of the reply
        # Requests that arrived and whose reply has not started. The client holds each of them
        # open, so the most at once is never above the client's own concurrency.
        self.waiting = 0
        self.max_waiting = 0
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # a count above changed
        self._closing = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._server.block_on_close = False
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        daemon=True)

    @property
    def base(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, path: str) -> str:
        return self.base + path

    def route(self, path: str, *replies: Reply) -> str:
        """Serve ``replies`` in turn at ``path`` (the last repeats); returns the URL."""
        with self._lock:
            self.routes[path] = list(replies)
        return self.url(path)

    def wait_idle(self, timeout_s: float = HOLD_S) -> None:
        """Wait until no request is being answered (the handler noticed a hang-up)."""
        with self._changed:
            if not self._changed.wait_for(lambda: self.in_flight == 0, timeout_s):
                raise AssertionError(f"{self.in_flight} requests still being answered "
                                     f"after {timeout_s} s")

    def _next(self, path: str) -> Reply:
        with self._lock:
            self.hits[path] += 1
            replies = self.routes.get(path)
            if not replies:
                return Reply(404, b"not found")
            return replies.pop(0) if len(replies) > 1 else replies[0]

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with server._lock:
                    server.received.append(
                        Received(self.command, self.path, dict(self.headers), body))
                reply = server._next(self.path)
                with server._changed:
                    server.in_flight += 1
                    server.waiting += 1
                    server.max_waiting = max(server.max_waiting, server.waiting)
                    server._changed.notify_all()
                try:
                    time.sleep(reply.latency_s)
                    if reply.held:
                        server._closing.wait(HOLD_S)
                    with server._changed:
                        server._changed.wait_for(
                            lambda: server.max_waiting >= reply.together, HOLD_S)
                        server.waiting -= 1
                    if self._answer(reply):
                        with server._lock:
                            server.completed[self.path] += 1
                finally:
                    with server._changed:
                        server.in_flight -= 1
                        server._changed.notify_all()
                self.close_connection = True

            do_POST = do_GET  # noqa: N815 - the http.server API

            def _answer(self, reply: Reply) -> bool:
                # the client hangs up on slow replies: that is the point, not an error
                with contextlib.suppress(ConnectionError, OSError):
                    self.send_response(reply.status)
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    if reply.send_length:
                        length = (len(reply.body) if reply.content_length is None
                                  else reply.content_length)
                        self.send_header("Content-Length", str(length))
                    self.send_header("Connection", "close")
                    self.end_headers()
                    if reply.drip_s:
                        for i in range(len(reply.body)):
                            self.wfile.write(reply.body[i:i + 1])
                            self.wfile.flush()
                            time.sleep(reply.drip_s)
                    else:
                        self.wfile.write(reply.body)
                    return True
                return False

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

        return Handler

    def __enter__(self) -> LocalServer:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
