"""Bounded HTTP(S) requests: the only HTTP client of the toolkit.

Image downloads (GET) and the caption LLM's chat completions (JSON POST) both
go through ``fetch_bytes``. Released PixMo subsets name their images by URL,
and the official downloader hung on slow hosts, obeyed ``Retry-After`` dated
days ahead and cached failures for good (pixmo.md 1.10, 6). Every request here
is bounded: a total deadline per attempt that covers connecting, sending,
headers and a slowly dripping body; a byte cap checked against
``Content-Length`` and again while streaming; a redirect cap; a per-host
concurrency bound shared by all threads of the process; and a fixed number of
retries with capped exponential backoff (or the server's ``Retry-After``, cut
to a cap) for 408, 429, 5xx and connection errors. Schemes come from an
explicit table (http and https only); local paths and ``file:`` are the
caller's business, and nothing runs a shell.
"""

from __future__ import annotations

import contextlib
import email.utils
import functools
import http.client
import logging
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from urllib.parse import quote, urljoin, urlsplit

from pixmo.config import above, at_least, check_fields, finite
from pixmo.errors import ConfigError, PixmoError

log = logging.getLogger(__name__)

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_RETRY_STATUS = frozenset({408, 429})  # and every 5xx
# characters kept as they are in a request path; anything else (non-ASCII, spaces,
# control characters) is percent-encoded, so no URL can inject a header line
_PATH_SAFE = "!#$%&'()*+,/:;=?@[]~"
_CHUNK = 1 << 16


@dataclass(frozen=True)
class FetchConfig:
    """Limits of one request (every attempt gets the whole ``timeout_s``)."""

    timeout_s: float = 15.0  # total per attempt: connect, headers and body together
    max_bytes: int = 50 << 20
    max_redirects: int = 5
    retries: int = 2  # attempts after the first, for retryable failures only
    backoff_base_s: float = 1.0  # wait base * 2**attempt before retry ``attempt`` (0-based)
    backoff_cap_s: float = 30.0
    retry_after_cap_s: float = 60.0  # a longer Retry-After is cut to this, never obeyed as is
    per_host_concurrency: int = 4
    user_agent: str = "pixmo-toolkit/0.1 (+https://github.com/allenai/molmo)"

    def __post_init__(self) -> None:
        check_fields(self, timeout_s=finite(above(0)), backoff_base_s=finite(at_least(0)),
                     backoff_cap_s=finite(above(0)), retry_after_cap_s=finite(at_least(0)),
                     max_bytes=at_least(1), max_redirects=at_least(0), retries=at_least(0),
                     per_host_concurrency=at_least(1))
        if not self.user_agent or any(c in self.user_agent for c in "\r\n"):
            raise ConfigError(f"must be one non-empty line, got {self.user_agent!r}",
                              field="FetchConfig.user_agent")


class FetchError(PixmoError):
    """A download that failed; ``retryable`` says whether a later try may succeed."""

    def __init__(self, message: str, *, url: str, retryable: bool,
                 status: int | None = None) -> None:
        self.url = url
        self.retryable = retryable
        self.status = status
        super().__init__(message, file=url)


class _HostLimits:
    """One semaphore per (scheme, host, port) and concurrency limit, shared by all
    threads of the process, so parallel callers never open more than the limit
    of connections to one host."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._semaphores: dict[tuple[str, str, int, int], threading.BoundedSemaphore] = {}

    def get(self, origin: tuple[str, str, int], limit: int) -> threading.BoundedSemaphore:
        key = (*origin, limit)
        with self._lock:
            semaphore = self._semaphores.get(key)
            if semaphore is None:
                semaphore = self._semaphores[key] = threading.BoundedSemaphore(limit)
            return semaphore


_HOST_LIMITS = _HostLimits()


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One verifying TLS context for the process (loading CA certificates is slow)."""
    return ssl.create_default_context()


def _https(host: str, port: int, timeout: float) -> http.client.HTTPConnection:
    return http.client.HTTPSConnection(host, port, timeout=timeout, context=_tls_context())


def _http(host: str, port: int, timeout: float) -> http.client.HTTPConnection:
    return http.client.HTTPConnection(host, port, timeout=timeout)


# scheme -> (connection factory, default port); nothing else is fetched
SCHEMES: dict[str, tuple[Callable[[str, int, float], http.client.HTTPConnection], int]] = {
    "http": (_http, 80),
    "https": (_https, 443),
}


def _origin(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path with query) of a URL, refusing other schemes."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise FetchError(f"scheme {scheme!r} is not fetched; use one of {sorted(SCHEMES)}",
                         url=url, retryable=False)
    try:
        port = parts.port or SCHEMES[scheme][1]
    except ValueError as exc:
        raise FetchError(f"bad port: {exc}", url=url, retryable=False) from exc
    if not parts.hostname:
        raise FetchError("URL has no host", url=url, retryable=False)
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    return scheme, parts.hostname, port, quote(path, safe=_PATH_SAFE)


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class _Retry(Exception):
    """A retryable failure of one attempt, with the wait the server asked for."""

    def __init__(self, error: FetchError, retry_after: float | None = None) -> None:
        super().__init__(str(error))
        self.error = error
        self.retry_after = retry_after


class _Watchdog:
    """Shuts a connection's socket down at the deadline, which wakes a read that
    is blocked on a server dripping bytes slower than any per-read timeout."""

    def __init__(self, sock: socket.socket, seconds: float) -> None:
        # the socket itself: http.client drops its own reference once a response
        # that ends with the connection starts, while the body is still being read
        self.fired = False
        self._sock = sock
        self._timer = threading.Timer(max(seconds, 0.0), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        self.fired = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)

    def cancel(self) -> None:
        self._timer.cancel()


def _read_body(response: http.client.HTTPResponse, url: str, config: FetchConfig,
               watchdog: _Watchdog) -> bytes:
    length = response.getheader("Content-Length")
    expected = int(length) if length and length.strip().isdigit() else None
    if expected is not None and expected > config.max_bytes:
        raise FetchError(f"body of {expected} bytes exceeds max_bytes {config.max_bytes}",
                         url=url, retryable=False, status=response.status)
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = response.read1(_CHUNK)
        if not chunk:
            break
        size += len(chunk)
        if size > config.max_bytes:
            raise FetchError(f"body exceeds max_bytes {config.max_bytes}", url=url,
                             retryable=False, status=response.status)
        chunks.append(chunk)
    if watchdog.fired:  # the shut-down socket reads as a clean end of the body
        raise TimeoutError("deadline passed while reading the body")
    if expected is not None and size != expected:
        raise _Retry(FetchError(f"truncated body: got {size} of {expected} bytes", url=url,
                                retryable=True, status=response.status))
    return b"".join(chunks)


@dataclass(frozen=True)
class _Call:
    """What a request sends besides its URL: the method, the body and the caller's headers."""

    method: str
    data: bytes | None
    headers: Mapping[str, str]

    def redirected(self, status: int, same_origin: bool) -> _Call:
        """The request to send to a redirect's Location: a 303, or a 301 or 302 after a
        POST, becomes a GET without body (as browsers do); the caller's headers (an API
        key) go only to the origin they were given for."""
        method, data = self.method, self.data
        if status == 303 or (status in (301, 302) and method == "POST"):
            method, data = "GET", None
        return _Call(method, data, self.headers if same_origin else {})


def _attempt(url: str, config: FetchConfig, call: _Call) -> bytes:
    """One attempt, following redirects, within one deadline."""
    deadline = time.monotonic() + config.timeout_s
    seen = {url}
    current = url
    for _ in range(config.max_redirects + 1):
        origin = _origin(current)
        semaphore = _HOST_LIMITS.get(origin[:3], config.per_host_concurrency)
        remaining = deadline - time.monotonic()
        if not semaphore.acquire(timeout=max(remaining, 0.0)):
            raise _Retry(FetchError(f"no free connection slot for {origin[1]} within the timeout",
                                    url=url, retryable=True))
        try:
            answer = _request(origin, url, call, config, deadline)
        finally:
            semaphore.release()
        if isinstance(answer, bytes):
            return answer
        status, location = answer
        current = urljoin(current, location)
        if current in seen:
            raise FetchError(f"redirect loop at {current}", url=url, retryable=False)
        seen.add(current)
        call = call.redirected(status, _origin(current)[:3] == origin[:3])
    raise FetchError(f"more than {config.max_redirects} redirects", url=url, retryable=False)


def _request(origin: tuple[str, str, int, str], url: str, call: _Call, config: FetchConfig,
             deadline: float) -> bytes | tuple[int, str]:
    """Send ``call`` to ``origin`` (scheme, host, port, path); the body, or the status
    and Location of a redirect."""
    scheme, host, port, path = origin
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise _Retry(FetchError(f"timed out after {config.timeout_s}s", url=url, retryable=True))
    conn = SCHEMES[scheme][0](host, port, remaining)
    watchdog: _Watchdog | None = None
    response: http.client.HTTPResponse | None = None
    try:
        conn.connect()  # bounded by the socket timeout, the remaining time
        watchdog = _Watchdog(conn.sock, deadline - time.monotonic())
        conn.request(call.method, path, body=call.data,
                     headers={**call.headers, "User-Agent": config.user_agent,
                              "Accept-Encoding": "identity"})
        response = conn.getresponse()
        status = response.status
        if status in _REDIRECTS:
            location = response.getheader("Location")
            if not location:
                raise FetchError(f"HTTP {status} redirect without Location", url=url,
                                 retryable=False, status=status)
            return status, location
        if status in _RETRY_STATUS or 500 <= status < 600:
            raise _Retry(FetchError(f"HTTP {status} {response.reason}", url=url, retryable=True,
                                    status=status),
                         _retry_after(response.getheader("Retry-After")))
        if status != 200:
            raise FetchError(f"HTTP {status} {response.reason}", url=url, retryable=False,
                             status=status)
        return _read_body(response, url, config, watchdog)
    except (TimeoutError, OSError, http.client.HTTPException) as exc:
        if (watchdog is not None and watchdog.fired) or isinstance(exc, TimeoutError):
            message = f"timed out after {config.timeout_s}s"
        else:
            message = f"connection failed: {type(exc).__name__}: {exc}"
        raise _Retry(FetchError(message, url=url, retryable=True)) from exc
    finally:
        if watchdog is not None:
            watchdog.cancel()
        if response is not None:
            response.close()
        conn.close()


def backoff_delay(attempt: int, config: FetchConfig, retry_after: float | None = None) -> float:
    """Seconds to wait before retry ``attempt`` (0-based): capped exponential
    backoff, or the server's Retry-After cut to ``retry_after_cap_s``."""
    if retry_after is not None:
        return min(retry_after, config.retry_after_cap_s)
    return min(config.backoff_cap_s, config.backoff_base_s * 2.0**attempt)


def fetch_bytes(url: str, config: FetchConfig | None = None, *, data: bytes | None = None,
                headers: Mapping[str, str] | None = None,
                sleep: Callable[[float], object] = time.sleep) -> bytes:
    """The body of ``url`` (http or https): a GET, or a POST of ``data`` with the
    caller's ``headers``. Transient failures are retried after ``sleep(backoff)``;
    raises ``FetchError`` with ``retryable`` and the last HTTP status on failure."""
    config = config or FetchConfig()
    _origin(url)
    call = _Call("GET" if data is None else "POST", data, dict(headers or {}))
    attempt = 0
    while True:
        try:
            return _attempt(url, config, call)
        except _Retry as retry:
            if attempt >= config.retries:
                raise retry.error from None
            delay = backoff_delay(attempt, config, retry.retry_after)
            log.debug("retry %d of %s in %.2fs: %s", attempt + 1, url, delay, retry.error)
            sleep(delay)
            attempt += 1


def _by_host_round_robin(urls: Iterable[str]) -> list[str]:
    """URLs reordered to take one from each host in turn, so the per-host bound
    does not leave workers waiting on one busy host while others sit idle."""
    queues: dict[str, deque[str]] = {}
    for url in urls:
        queues.setdefault(urlsplit(url).netloc.lower(), deque()).append(url)
    ordered = []
    while queues:
        for host in list(queues):
            ordered.append(queues[host].popleft())
            if not queues[host]:
                del queues[host]
    return ordered


def fetch_many(urls: Iterable[str], config: FetchConfig | None = None, *,
               workers: int = 16) -> Iterator[tuple[str, bytes | FetchError]]:
    """Download distinct URLs with a thread pool, yielding ``(url, bytes or
    FetchError)`` as each finishes. At most ``4 * workers`` downloads are in
    flight or waiting to be consumed, so memory stays bounded however many URLs
    there are; per-host limits hold across the pool."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    config = config or FetchConfig()
    pending = deque(_by_host_round_robin(dict.fromkeys(urls)))

    def one(url: str) -> bytes | FetchError:
        try:
            return fetch_bytes(url, config)
        except FetchError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pixmo-fetch") as pool:
        running: dict[Future[bytes | FetchError], str] = {}
        while pending or running:
            while pending and len(running) < 4 * workers:
                url = pending.popleft()
                running[pool.submit(one, url)] = url
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                yield running.pop(future), future.result()
