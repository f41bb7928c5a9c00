"""The HTTP API of ``pixmo collect`` (Starlette): the page and scripts use the same routes.

``GET /api/task`` 200 task JSON or 204; ``GET /images/NAME``; ``POST /api/caption``
(multipart ``task_id``, ``audio``) 201; ``GET /api/caption/TASK_ID`` the recording's
transcript; ``POST /api/points`` (JSON) 201. Every request but the page's own files carries
``Authorization: Bearer TOKEN``; every error is JSON ``{"error": ...}``. Bodies are read
with a byte limit before any parsing, and file I/O runs off the event loop.
"""

from __future__ import annotations

import hmac
import json
import socket
from collections.abc import Callable, Mapping
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from pixmo.collect.collector import CollectError, Collector
from pixmo.errors import PixmoError

STATIC = Path(__file__).parent / "static"
MAX_JSON_BYTES = 64 << 10
MULTIPART_OVERHEAD = 64 << 10
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob:; "
                               "media-src 'self' blob:",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def _bounded_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise CollectError(413, f"request body larger than {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise CollectError(413, f"request body larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _replayed_form(request: Request, body: bytes):  # noqa: ANN202 (starlette FormData)
    """Parse a body already read (and bounded) as a multipart form."""
    sent = False

    async def receive() -> dict:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return await Request(request.scope, receive).form(max_files=1, max_fields=4)


class _Api:
    """The route handlers over one ``Collector``."""

    def __init__(self, collector: Collector, tokens: Mapping[str, str]) -> None:
        self.collector = collector
        self.known = [(t.encode(), who) for t, who in tokens.items()]

    def annotator(self, request: Request) -> str:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise CollectError(401, "missing Authorization: Bearer TOKEN")
        found = None
        for secret, who in self.known:  # compare with every token, in constant time each
            if hmac.compare_digest(secret, token.strip().encode()):
                found = who
        if found is None:
            raise CollectError(401, "unknown token")
        return found

    async def page(self, request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)

    async def task(self, request: Request) -> Response:
        found = self.collector.next_task(self.annotator(request))
        return Response(status_code=204) if found is None else JSONResponse(found)

    async def image(self, request: Request) -> Response:
        self.annotator(request)
        info = self.collector.image(request.path_params["name"])
        return FileResponse(info.path, media_type=info.media_type,
                            headers={"Cache-Control": "private, max-age=3600"})

    async def caption(self, request: Request) -> Response:
        who = self.annotator(request)
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise CollectError(415, "expected multipart/form-data with task_id and audio")
        limit = self.collector.config.max_audio_bytes + MULTIPART_OVERHEAD
        form = await _replayed_form(request, await _bounded_body(request, limit))
        upload = form.get("audio")
        if upload is None or isinstance(upload, str):
            raise CollectError(400, "audio file is missing")
        data = await upload.read()
        status, record = await run_in_threadpool(self.collector.submit_caption, who,
                                                 form.get("task_id"), data)
        return JSONResponse(record, status_code=status)

    async def transcript(self, request: Request) -> Response:
        who = self.annotator(request)
        return JSONResponse(self.collector.transcript(who, request.path_params["task_id"]))

    async def points(self, request: Request) -> Response:
        who = self.annotator(request)
        if not request.headers.get("content-type", "").startswith("application/json"):
            raise CollectError(415, "expected application/json")
        try:
            body = json.loads(await _bounded_body(request, MAX_JSON_BYTES))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CollectError(400, f"not JSON: {exc}") from exc
        status, record = await run_in_threadpool(self.collector.submit_points, who, body)
        return JSONResponse(record, status_code=status)


async def _collect_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, CollectError)
    return _error(exc.status, exc.message)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return _error(exc.status_code, exc.detail)


def create_app(collector: Collector, tokens: Mapping[str, str]) -> Starlette:
    """The app over one ``Collector``; ``tokens`` maps secret tokens to annotator ids."""
    api = _Api(collector, tokens)
    routes = [Route("/", api.page), Route("/api/task", api.task),
              Route("/images/{name:path}", api.image),
              Route("/api/caption", api.caption, methods=["POST"]),
              Route("/api/caption/{task_id}", api.transcript),
              Route("/api/points", api.points, methods=["POST"]),
              Mount("/static", StaticFiles(directory=STATIC), name="static")]
    return Starlette(routes=routes, exception_handlers={CollectError: _collect_error,
                                                       HTTPException: _http_error})


def serve(app: Starlette, host: str, port: int, ready: Callable[[str], None]) -> None:
    """Listen on ``host:port`` (0: any free port), call ``ready(url)`` once the socket
    accepts connections, then serve until interrupted. An address that cannot be listened
    on is a ``PixmoError`` naming it."""
    import uvicorn

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise PixmoError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    ready(f"http://{shown}:{sock.getsockname()[1]}/")
    config = uvicorn.Config(app, log_level="warning", access_log=False)
    uvicorn.Server(config).run(sockets=[sock])
