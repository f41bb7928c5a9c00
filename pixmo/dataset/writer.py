"""Writing shards: byte-reproducible WebDataset tars, committed one by one, and whole datasets.

A shard is written under a temporary name, renamed to ``pixmo-NNNNNN.tar``
when complete, and only then gets its stats JSON: the stats file is the
commit marker, so a shard without one does not exist as far as readers and
resumed builds are concerned. Members are stored as given (original image
bytes) with a fixed mtime, owner and mode, so the same samples always give
byte-identical tars.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import re
import tarfile
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from pixmo.atomic import atomic_write_bytes, partial_path
from pixmo.config import at_least, check_fields
from pixmo.dataset.cutting import BLOCK, ShardCutter, tar_bytes
from pixmo.dataset.format import (
    ANNOTATION_KINDS,
    SHARDS_DIR,
    ShardSample,
    ShardStats,
    json_bytes,
    shard_name,
    validate_key,
)
from pixmo.dataset.tables import describe, manifest_row, write_tables
from pixmo.errors import ConfigError
from pixmo.schema import validate

log = logging.getLogger(__name__)


class _HashingFile(io.RawIOBase):
    """A write-only file that hashes and counts what passes through it."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self.sha256 = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self.sha256.update(view)
        self.size += view.nbytes
        return self._raw.write(view)


def _add_members(tar: tarfile.TarFile, sample: ShardSample) -> None:
    """Members with fixed metadata, so equal samples give equal bytes."""
    validate_key(sample.key)
    for ext, data in sample.members():
        info = tarfile.TarInfo(f"{sample.key}.{ext}")
        info.size = len(data)
        info.mtime = 0
        info.mode = 0o444
        info.uname = info.gname = "pixmo"
        tar.addfile(info, io.BytesIO(data))


class _Discard(io.RawIOBase):
    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        return memoryview(data).nbytes


def tar_digest(samples: Iterable[ShardSample]) -> tuple[str, int]:
    """The sha256 and size the shard of these samples would have, without
    writing it: lets a resumed build prove a committed shard is current."""
    hashing = _HashingFile(_Discard())  # type: ignore[arg-type]
    with tarfile.open(fileobj=hashing, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for sample in samples:
            _add_members(tar, sample)
    return hashing.sha256.hexdigest(), hashing.size


class TarShard:
    """One shard being written: a temporary file until ``commit``."""

    def __init__(self, shards_dir: Path, index: int, prefix: str = "pixmo") -> None:
        self.index = index
        self.name = shard_name(index, prefix)
        self.final = shards_dir / self.name
        self.tmp = partial_path(self.final)
        shards_dir.mkdir(parents=True, exist_ok=True)
        self._raw = open(self.tmp, "wb")  # noqa: SIM115 - closed in commit/abort
        self._hashing = _HashingFile(self._raw)
        self._tar = tarfile.open(fileobj=self._hashing, mode="w|", format=tarfile.PAX_FORMAT)
        self.rows: list[dict[str, Any]] = []
        self.counts = dict.fromkeys(ANNOTATION_KINDS, 0)
        self.point_methods: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()

    def add(self, sample: ShardSample) -> None:
        _add_members(self._tar, sample)
        self.rows.append(manifest_row(sample, self.name))
        for kind in ANNOTATION_KINDS:
            self.counts[kind] += len(sample.json.get(kind, ()))
        self.point_methods.update(p.get("collection_method", "?")
                                  for p in sample.json.get("points", ()))
        self.failures.update(f["reason"] for f in sample.json.get("failures", ()))

    def commit(self) -> ShardStats:
        """Finish the tar, rename it into place, then write its stats (the marker)."""
        self._tar.close()
        self._raw.flush()
        os.fsync(self._raw.fileno())
        self._raw.close()
        os.replace(self.tmp, self.final)
        stats = ShardStats(
            shard=self.name,
            index=self.index,
            samples=len(self.rows),
            bytes=self._hashing.size,
            sha256=self._hashing.sha256.hexdigest(),
            first_key=self.rows[0]["key"] if self.rows else None,
            last_key=self.rows[-1]["key"] if self.rows else None,
            counts=dict(self.counts),
            point_methods=dict(sorted(self.point_methods.items())),
            failures=dict(sorted(self.failures.items())),
        )
        atomic_write_bytes(self.final.with_suffix(".json"), json_bytes(stats.to_json()))
        log.debug("committed %s: %d samples, %d bytes", self.name, stats.samples, stats.bytes)
        return stats

    def abort(self) -> None:
        """Drop the unfinished shard; its temporary file is removed."""
        with contextlib.suppress(OSError, ValueError, tarfile.TarError):
            self._tar.close()  # flushes the stream's buffer before the file is closed
        self._raw.close()
        self.tmp.unlink(missing_ok=True)


def estimated_size(sample: ShardSample) -> int:
    """Tar bytes a sample adds: a header and padded data per member."""
    return tar_bytes(len(data) for _, data in sample.members())


@dataclass(frozen=True)
class ShardConfig:
    """How samples are cut into shards."""

    max_samples: int = 1000
    max_bytes: int = 1 << 30
    # a build cuts its keys in ranges of about this many samples, planned apart
    # (``pixmo.dataset.cutting.partitions``); the one-process writer keeps its input's order
    partition_samples: int = 100_000
    prefix: str = "pixmo"
    validate_samples: bool = True  # check each sample JSON against the ``sample`` schema

    def __post_init__(self) -> None:
        check_fields(self, max_samples=at_least(1), max_bytes=at_least(BLOCK * 4),
                     partition_samples=at_least(1))
        if not re.fullmatch(r"[A-Za-z0-9_-]+", self.prefix):
            raise ConfigError(f"must match [A-Za-z0-9_-]+, got {self.prefix!r}",
                              field="ShardConfig.prefix")


@dataclass
class WrittenShards:
    stats: list[ShardStats] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)


class ShardWriter:
    """Writes samples into ``shards/PREFIX-NNNNNN.tar``, rolling to a new shard
    before a sample that would pass ``max_samples`` or ``max_bytes``.

    Use as a context manager: leaving the block normally commits the last
    shard; leaving it with an exception removes the unfinished one.
    """

    def __init__(self, out_dir: str | os.PathLike[str], config: ShardConfig | None = None,
                 start_index: int = 0) -> None:
        self.config = config or ShardConfig()
        self.shards_dir = Path(out_dir) / SHARDS_DIR
        self._cutter = ShardCutter(self.config.max_samples, self.config.max_bytes, start_index)
        self.written = WrittenShards()
        self._current: TarShard | None = None

    def write(self, sample: ShardSample) -> None:
        validate_key(sample.key)
        if self.config.validate_samples:
            validate("sample", sample.json, record_id=sample.key)
        index = self._cutter.shard_of(estimated_size(sample))
        if self._current is not None and self._current.index != index:
            self._commit()
        if self._current is None:
            self._current = TarShard(self.shards_dir, index, self.config.prefix)
        self._current.add(sample)

    def _commit(self) -> None:
        assert self._current is not None
        stats = self._current.commit()
        self.written.stats.append(stats)
        self.written.rows.extend(self._current.rows)
        self._current = None

    def close(self) -> WrittenShards:
        if self._current is not None:
            self._commit()
        return self.written

    def abort(self) -> None:
        if self._current is not None:
            self._current.abort()
            self._current = None

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_shard(out_dir: str | os.PathLike[str], index: int, samples: Iterable[ShardSample],
                prefix: str = "pixmo") -> tuple[ShardStats, list[dict[str, Any]]]:
    """Write one whole shard with a given index (engines assign samples to shards
    themselves and write them in parallel); returns its stats and manifest rows."""
    shard = TarShard(Path(out_dir) / SHARDS_DIR, index, prefix)
    try:
        for sample in samples:
            validate("sample", sample.json, record_id=sample.key)
            shard.add(sample)
    except BaseException:
        shard.abort()
        raise
    return shard.commit(), shard.rows



def write_dataset(out_dir: str | os.PathLike[str], samples: Iterable[ShardSample], *,
                  name: str, config: ShardConfig | None = None,
                  rejects: Iterable[dict[str, str]] = (), **extra: Any) -> dict[str, Any]:
    """Write a whole dataset directory in one process: shards, manifest,
    rejects and dataset.json (written last). Returns the dataset.json body."""
    out = Path(out_dir)
    with ShardWriter(out, config) as writer:
        for sample in samples:
            writer.write(sample)
    rejects = list(rejects)
    extra.setdefault("engine", "local")
    description = describe(name, writer.written.stats, **extra)
    description["counts"]["rejects"] = len(rejects)
    write_tables(out, writer.written.rows, rejects, description)
    return description
