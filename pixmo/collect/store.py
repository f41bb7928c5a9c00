"""Durable collection files: JSONL records appended and fsynced before they are acknowledged,
a torn last line repaired on start, and audio published whole under a server-chosen name.

A record is one ``write`` of the whole line and its newline, then ``fsync``: a kill can only
leave a last line without its newline, which was never acknowledged, so opening the log
cuts it off (and says how many bytes it cut). A failed append is cut back the same way, so
the next record never lands behind half a line.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pixmo.atomic import atomic_write_bytes, remove_partials
from pixmo.errors import PixmoError

log = logging.getLogger(__name__)

# Container signatures of the audio the contract accepts: (offset, magic, extension).
_SIGNATURES = ((0, b"OggS", "ogg"), (0, b"\x1aE\xdf\xa3", "webm"), (0, b"fLaC", "flac"),
               (0, b"ID3", "mp3"), (0, b"\xff\xfb", "mp3"), (0, b"\xff\xf3", "mp3"),
               (4, b"ftyp", "m4a"))


@dataclass(frozen=True)
class Repair:
    """What opening a log found at its end: bytes of a line a kill cut short."""

    file: str
    dropped_bytes: int

    def line(self) -> str:
        return f"{self.file}: repaired a torn last line ({self.dropped_bytes} bytes dropped)"


def audio_extension(data: bytes) -> str | None:
    """The audio container ``data`` starts with (wav, ogg, webm, flac, mp3, m4a), or None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return "wav"
    for offset, magic, ext in _SIGNATURES:
        if data[offset:offset + len(magic)] == magic:
            return ext
    return None


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class RecordLog:
    """One JSONL file of the raw contract, opened for appending."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.repair = self._repair_tail()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        _fsync_dir(self.path.parent)
        self._lock = threading.Lock()

    def _repair_tail(self) -> Repair | None:
        if not self.path.exists():
            return None
        with open(self.path, "rb+") as fh:
            size = fh.seek(0, os.SEEK_END)
            if size == 0:
                return None
            fh.seek(max(0, size - (1 << 20)))
            tail = fh.read()
            if tail.endswith(b"\n"):
                return None
            cut = tail.rfind(b"\n")
            keep = size - len(tail) + cut + 1 if cut >= 0 else 0
            if cut < 0 and size > len(tail):
                raise PixmoError("last line is longer than 1 MiB; not a collect log",
                                 file=str(self.path))
            fh.truncate(keep)
            fh.flush()
            os.fsync(fh.fileno())
        repair = Repair(str(self.path), size - keep)
        log.warning("%s", repair.line())
        return repair

    def records(self) -> Iterator[dict[str, Any]]:
        """The records already in the file (lines that are not JSON objects are skipped here:
        the build's reader rejects them with their line number)."""
        with open(self.path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    data = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(data, dict):
                    yield data

    def append(self, record: dict[str, Any]) -> None:
        """Write one record and fsync it; on return it survives a kill."""
        line = (json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n").encode()
        with self._lock:
            start = os.lseek(self._fd, 0, os.SEEK_END)
            try:
                written = os.write(self._fd, line)
                if written != len(line):
                    raise OSError(f"short write: {written} of {len(line)} bytes")
                os.fsync(self._fd)
            except OSError:
                os.ftruncate(self._fd, start)
                raise

    def close(self) -> None:
        os.close(self._fd)


class AudioFolder:
    """``DIR/audio``: files named by the server, written whole (temp name, fsync, rename)."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        for leftover in remove_partials(self.folder):
            log.warning("removed %s, an audio file a kill left half-written", leftover)

    def write(self, stem: str, data: bytes, extension: str) -> str:
        """Publish ``data`` as ``audio/STEM.EXT``; returns that path relative to DIR."""
        name = f"{stem}.{extension}"
        atomic_write_bytes(self.folder / name, data)
        _fsync_dir(self.folder)
        return f"{self.folder.name}/{name}"
