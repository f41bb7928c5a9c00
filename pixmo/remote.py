"""Files and folders named by a local path or a URL: the toolkit's one opener.

``open_url`` streams what a local path, ``file://`` or fsspec URL (s3://,
gs://, memory://, …) names; ``read_url`` reads it whole, and reads an http(s)
URL through ``pixmo.fetch``, with the downloader's limits on size, time,
retries and redirects. A build reads its raw folder and writes its dataset
folder through ``Folder``, so a path and a URL take the same code, on the
driver and on any worker.
Local paths, and ``file://`` URLs, keep the local guarantees: a file is
written under a temporary name, fsynced and renamed. On object stores one
upload is itself all or nothing, so objects are put under their final name;
on other filesystems a temporary name is moved into place. Which file is
written when (shards, then their markers, dataset.json last) is the caller's
commit protocol.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from pixmo.atomic import PARTIAL_SUFFIX, atomic_open, atomic_write_bytes
from pixmo.fetch import FetchConfig, fetch_bytes

OBJECT_STORES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"})
_CHUNK = 1 << 20


def is_remote(path: str | os.PathLike[str]) -> bool:
    """A URL that fsspec opens: any scheme but ``file://``."""
    text = os.fspath(path)
    return "://" in text and not text.startswith("file://")


def is_http(ref: str) -> bool:
    """An http(s) URL: what a record's ``image`` may name instead of a file,
    fetched with the downloader's limits rather than opened through fsspec."""
    return ref.startswith(("http://", "https://"))


def open_url(url: str | os.PathLike[str]) -> BinaryIO:
    """A binary stream of the file a local path, ``file://`` or fsspec URL names; the
    caller closes it. An http(s) URL streams through fsspec too (shards can be far
    larger than a download's byte cap); ``read_url`` reads one through ``pixmo.fetch``."""
    text = os.fspath(url)
    if is_remote(text):
        fs, path = _filesystem(text)
        return fs.open(path, "rb")
    return open(text.removeprefix("file://"), "rb")  # noqa: SIM115 - the caller closes it


def read_url(ref: str | os.PathLike[str], fetch: FetchConfig | None = None) -> bytes:
    """The bytes ``ref`` names: an http(s) URL through ``pixmo.fetch`` with ``fetch``'s
    limits (``FetchError`` when it fails), anything else through ``open_url``."""
    text = os.fspath(ref)
    if is_http(text):
        return fetch_bytes(text, fetch)
    with open_url(text) as fh:
        return fh.read()


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The sha256 of a file's bytes, read in chunks: a local path, ``file://`` or fsspec URL."""
    digest = hashlib.sha256()
    with open_url(path) as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _filesystem(url: str) -> tuple[Any, str]:
    """The filesystem and root path of a URL; fsspec keeps one instance per
    protocol and options, so this is cheap, and follows configuration changes."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(url)
    return fs, root.rstrip("/")


def inside(rel: str) -> str | None:
    """``rel`` normalised, or None if ``..`` or an absolute path would leave the folder."""
    name = posixpath.normpath(rel)
    if name.startswith("/") or name == ".." or name.startswith("../"):
        return None
    return name


@dataclass(frozen=True)
class Folder:
    """A directory, local or behind an fsspec URL; names inside it use ``/``."""

    url: str

    @property
    def remote(self) -> bool:
        return is_remote(self.url)

    @property
    def local(self) -> str:
        """The local path (only for a local folder)."""
        return os.fspath(self.url).removeprefix("file://")

    def _fs(self) -> tuple[Any, str]:
        return _filesystem(self.url)

    def path(self, rel: str) -> str:
        """Where ``rel`` is: a local path, or the filesystem's path (no protocol)."""
        if not self.remote:
            return os.path.join(self.local, rel)
        return f"{self._fs()[1]}/{rel}"

    def is_file(self, rel: str) -> bool:
        if not self.remote:
            return os.path.isfile(self.path(rel))
        return bool(self._fs()[0].isfile(self.path(rel)))

    def size(self, rel: str) -> int:
        """Bytes of a file; ``FileNotFoundError`` if there is none."""
        if not self.remote:
            return os.stat(self.path(rel)).st_size
        return int(self._fs()[0].size(self.path(rel)))

    def read_bytes(self, rel: str) -> bytes:
        if not self.remote:
            return Path(self.path(rel)).read_bytes()
        return bytes(self._fs()[0].cat_file(self.path(rel)))

    def open(self, rel: str) -> BinaryIO:
        """A binary stream of ``rel``, read as it is consumed; the caller closes it."""
        return open_url(self._url(rel))

    def sha256(self, rel: str) -> str:
        return file_sha256(self._url(rel))

    def _url(self, rel: str) -> str:
        return self.path(rel) if not self.remote else f"{self.url.rstrip('/')}/{rel}"

    def glob(self, pattern: str) -> list[str]:
        """Names (relative to the folder) matching a glob pattern, sorted."""
        if not self.remote:
            return sorted(p.relative_to(self.local).as_posix()
                          for p in Path(self.local).glob(pattern))
        fs, root = self._fs()
        fs.invalidate_cache(root)  # another process may have written since the last listing
        return sorted(p[len(root) + 1:] for p in fs.glob(f"{root}/{pattern}"))

    def makedirs(self, rel: str) -> None:
        if not self.remote:
            os.makedirs(self.path(rel), exist_ok=True)
        else:  # a no-op on object stores, which have no folders
            self._fs()[0].makedirs(self.path(rel), exist_ok=True)

    def write_bytes(self, rel: str, data: bytes) -> None:
        if not self.remote:
            atomic_write_bytes(self.path(rel), data)
            return
        self._publish(rel, lambda fs, path: fs.pipe_file(path, data))

    def put(self, local_file: str | os.PathLike[str], rel: str) -> None:
        """Copy a local file to ``rel``; it appears whole or not at all."""
        if not self.remote:
            with open(local_file, "rb") as src, atomic_open(self.path(rel)) as dst:
                shutil.copyfileobj(src, dst, _CHUNK)
            return
        self._publish(rel, lambda fs, path: fs.put_file(os.fspath(local_file), path))

    def _publish(self, rel: str, write: Callable[[Any, str], Any]) -> None:
        fs, _ = self._fs()
        final = self.path(rel)
        protocols = {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)
        if protocols & OBJECT_STORES:
            write(fs, final)
            return
        tmp = f"{final}.{uuid.uuid4().hex[:8]}{PARTIAL_SUFFIX}"
        try:
            write(fs, tmp)
            fs.mv(tmp, final)
        except BaseException:
            with contextlib.suppress(OSError):
                fs.rm(tmp)
            raise

    def remove(self, rel: str) -> None:
        """Delete a file if it exists."""
        if not self.remote:
            Path(self.path(rel)).unlink(missing_ok=True)
            return
        with contextlib.suppress(FileNotFoundError):
            self._fs()[0].rm_file(self.path(rel))

    def remove_tree(self, rel: str) -> None:
        if not self.remote:
            shutil.rmtree(self.path(rel), ignore_errors=True)
            return
        fs, _ = self._fs()
        if fs.exists(self.path(rel)):
            fs.rm(self.path(rel), recursive=True)

    @contextlib.contextmanager
    def local_copy(self, rel: str) -> Iterator[str]:
        """A local path holding ``rel``: the file itself, or a temporary copy
        (same suffix, so readers that look at it still work)."""
        if not self.remote:
            yield self.path(rel)
            return
        with tempfile.TemporaryDirectory(prefix="pixmo-") as tmp:
            path = os.path.join(tmp, posixpath.basename(rel))
            self._fs()[0].get_file(self.path(rel), path)
            yield path

    @contextlib.contextmanager
    def local_target(self, rel: str) -> Iterator[str]:
        """A local path to write ``rel`` at: the file itself for a local folder
        (the writer publishes it atomically), or a temporary file uploaded
        when the block succeeds."""
        if not self.remote:
            yield self.path(rel)
            return
        with tempfile.TemporaryDirectory(prefix="pixmo-") as tmp:
            path = os.path.join(tmp, posixpath.basename(rel))
            yield path
            self.put(path, rel)
