"""Groupings on local disk, for builds that run on this machine.

Beam's local runner keeps every PCollection that crosses a grouping in memory
until the next stage has read all of it, so a local build's memory would grow
with its input. Locally, the build's groupings go through files instead: each
bundle appends its elements to one file per partition, and what Beam groups
is only the names of those files. A reader then holds one partition at a
time, so memory is bounded by the input divided by ``PARTITIONS``. Runners on
a cluster keep Beam's own GroupByKey: their shuffle already spills to disk,
and their workers share no disk.

Files are named per bundle and appear under their final name when the bundle
finishes, so a bundle that fails and is retried leaves no half-written file
behind a name Beam passes on. The folder (``SpillFolder``) belongs to one
build and is removed when the build ends; the next build removes the folders
of builds that were killed.
"""

from __future__ import annotations

import os
import shutil
import struct
import tempfile
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any, BinaryIO

import apache_beam as beam
from apache_beam.coders import FastPrimitivesCoder
from apache_beam.transforms.window import GlobalWindows

PARTITIONS = 256
PREFIX = "pixmo-shuffle-"
_LENGTH = struct.Struct("<I")
_coder = FastPrimitivesCoder()


class SpillFolder:
    """One build's private folder for its groupings, made in ``parent`` (default: the
    system's temporary folder) when the block starts and removed when it ends; entering
    it first removes the folders left in ``parent`` by builds that were killed."""

    def __init__(self, parent: str | None = None) -> None:
        self.parent = parent if parent is not None else tempfile.gettempdir()
        self.path = ""

    def __enter__(self) -> SpillFolder:
        for name in os.listdir(self.parent):
            pid = name.removeprefix(PREFIX).split("-", 1)[0]
            if name.startswith(PREFIX) and pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(os.path.join(self.parent, name), ignore_errors=True)
        self.path = tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=self.parent)
        return self

    def __exit__(self, *_: Any) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def _new(self, name: str) -> str:
        path = os.path.join(self.path, name)
        os.makedirs(path)
        return path

    def group(self, name: str) -> GroupOnDisk:
        """A ``GroupOnDisk`` through a new subfolder ``name``."""
        return GroupOnDisk(self._new(name))

    def spill_in_order(self, name: str) -> Spill:
        """A ``Spill`` into a new subfolder ``name`` whose files ``in_order`` reads back
        in key order."""
        return Spill(self._new(name), ordered)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def hashed(key: Any) -> str:
    """A partition for grouping: a hash stable across processes (Python's
    ``hash`` of a string is not)."""
    return f"{zlib.crc32(repr(key).encode()) % PARTITIONS:03d}"


def ordered(key: str) -> str:
    """A partition that keeps order: partitions sorted by name hold keys in
    sorted order (the hex of the key's first two characters, as UTF-8)."""
    return key[:2].encode().hex()


def read_spill(path: str) -> Iterator[tuple[Any, Any]]:
    """The (key, value) pairs of one spill file, in the order they were written.
    Only the build's own files, in its private (0700) folder, are ever read:
    Beam's coder falls back to pickle for types it does not know."""
    with open(path, "rb") as fh:
        while header := fh.read(_LENGTH.size):
            (size,) = _LENGTH.unpack(header)
            yield _coder.decode(fh.read(size))


class Spill(beam.DoFn):
    """Writes (key, value) elements to files, one per partition and bundle;
    outputs (partition, file) for each file it wrote."""

    def __init__(self, directory: str, partition: Callable[[Any], str]) -> None:
        self.directory, self.partition = directory, partition

    def start_bundle(self) -> None:
        self.files: dict[str, tuple[str, BinaryIO]] = {}
        self.bundle = uuid.uuid4().hex

    def process(self, element: tuple[Any, Any]) -> None:
        part = self.partition(element[0])
        if part not in self.files:
            path = os.path.join(self.directory, f"{part}-{self.bundle}")
            self.files[part] = (path, open(f"{path}.partial", "wb"))  # noqa: SIM115
        encoded = _coder.encode(element)
        self.files[part][1].write(_LENGTH.pack(len(encoded)) + encoded)

    def finish_bundle(self) -> Iterator[Any]:
        for part, (path, fh) in sorted(self.files.items()):
            fh.close()
            os.replace(f"{path}.partial", path)
            yield GlobalWindows.windowed_value((part, path))

    def teardown(self) -> None:  # a failed bundle: close what it left open
        for _, fh in getattr(self, "files", {}).values():
            fh.close()


class _Groups(beam.DoFn):
    """(key, values) for every key in one partition's files."""

    def process(self, element: tuple[str, Iterable[str]]) -> Iterator[tuple[Any, list[Any]]]:
        groups: dict[Any, list[Any]] = {}
        for path in sorted(element[1]):
            for key, value in read_spill(path):
                groups.setdefault(key, []).append(value)
        yield from groups.items()


class GroupOnDisk(beam.PTransform):
    """``beam.GroupByKey`` through files in ``directory``: the same
    (key, values) output, with one partition's elements in memory at a time."""

    def __init__(self, directory: str) -> None:
        super().__init__()
        self.directory = directory

    def expand(self, pcoll: beam.PCollection) -> beam.PCollection:
        return (pcoll
                | "Spill" >> beam.ParDo(Spill(self.directory, hashed))
                | "Files" >> beam.GroupByKey()
                | "Groups" >> beam.ParDo(_Groups()))


def in_order(spills: Iterable[tuple[str, str]]) -> Iterator[tuple[Any, Any]]:
    """Every (key, value) of files written with ``ordered`` partitions, in key
    order, reading one partition at a time."""
    by_part: dict[str, list[str]] = {}
    for part, path in spills:
        by_part.setdefault(part, []).append(path)
    for part in sorted(by_part):
        pairs = [pair for path in sorted(by_part[part]) for pair in read_spill(path)]
        pairs.sort(key=lambda pair: pair[0])
        yield from pairs
