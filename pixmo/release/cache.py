"""What an import keeps between runs: the image bytes that became samples, and the URLs
that failed.

Failures are never cached as bytes: a rerun takes the kept bytes from disk and
tries every URL in ``download_failures.jsonl`` again.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pixmo.atomic import atomic_write_bytes
from pixmo.errors import PixmoError

FAILURES = "download_failures.jsonl"


class ImageCache:
    """Image bytes on disk, named by the sha256 of a URL (or of ``sha256:<hex>`` for
    embedded images); written atomically, so a killed run leaves no half file."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def path(self, name: str) -> Path:
        digest = hashlib.sha256(name.encode()).hexdigest()
        return self.root / digest[:2] / digest

    def get(self, name: str) -> bytes | None:
        try:
            return self.path(name).read_bytes()
        except FileNotFoundError:
            return None

    def put(self, name: str, data: bytes) -> None:
        path = self.path(name)
        if not path.exists():
            atomic_write_bytes(path, data)

    def drop(self, name: str) -> None:
        self.path(name).unlink(missing_ok=True)


def read_failures(out_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The URLs the last import into ``out_dir`` could not use, with their reasons."""
    path = Path(out_dir) / FAILURES
    if not path.is_file():
        return []
    out = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise PixmoError(f"not JSON: {exc.msg}", file=os.fspath(path), record=number) from exc
    return out


def write_failures(out_dir: str | os.PathLike[str], failures: Iterable[dict[str, Any]]) -> None:
    """List the URLs this import could not use, by URL, for the next run to retry."""
    lines = b"".join(json.dumps(f, sort_keys=True).encode() + b"\n"
                     for f in sorted(failures, key=lambda f: f["url"]))
    atomic_write_bytes(Path(out_dir) / FAILURES, lines)
