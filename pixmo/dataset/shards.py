"""PixMo shards: WebDataset tars, their commit markers, the manifest and dataset.json.

Layout of a dataset directory (see DESIGN.md)::

    dataset.json  manifest.parquet  rejects.parquet
    shards/pixmo-000000.tar  shards/pixmo-000000.json  ...

A shard is written under a temporary name, renamed to ``pixmo-NNNNNN.tar``
when complete, and only then gets its stats JSON: the stats file is the
commit marker, so a shard without one does not exist as far as readers and
resumed builds are concerned. Members are stored as given (original image
bytes) with a fixed mtime, owner and mode, so the same samples always give
byte-identical tars. The reader never decodes anything but JSON: no pickle,
no ``torch.load``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from pixmo.atomic import atomic_open, atomic_write_bytes, partial_path
from pixmo.errors import ConfigError, PixmoError
from pixmo.remote import is_remote
from pixmo.schema import load_schema, validate

log = logging.getLogger(__name__)

SHARDS_DIR = "shards"
DATASET_JSON = "dataset.json"
MANIFEST = "manifest.parquet"
REJECTS = "rejects.parquet"
FORMAT_VERSION = 1
KEY_RE = re.compile(r"^[A-Za-z0-9-][A-Za-z0-9_-]*$")
MAX_KEY_LENGTH = 128
ANNOTATION_KINDS = ("transcripts", "captions", "points", "qa")
_BLOCK = 512


def validate_key(key: str) -> str:
    """Refuse keys that a WebDataset reader would not give back unchanged."""
    if not isinstance(key, str) or not key:
        raise PixmoError(f"sample key must be a non-empty string, got {key!r}", field="key")
    if "." in key:
        raise PixmoError(
            f"sample key {key!r} contains '.'; readers split member names at the first dot",
            field="key",
        )
    if "/" in key:
        raise PixmoError(f"sample key {key!r} contains '/'", field="key")
    if key.startswith("_"):
        raise PixmoError(
            f"sample key {key!r} starts with '_', which readers reserve for metadata",
            field="key",
        )
    if not KEY_RE.match(key) or len(key) > MAX_KEY_LENGTH:
        raise PixmoError(
            f"sample key {key!r} must match [A-Za-z0-9_-]+ and be at most "
            f"{MAX_KEY_LENGTH} characters",
            field="key",
        )
    return key


def json_bytes(obj: Any) -> bytes:
    """The canonical encoding of JSON members: sorted keys, no spaces, UTF-8."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def shard_name(index: int, prefix: str = "pixmo") -> str:
    return f"{prefix}-{index:06d}.tar"


@dataclass
class ShardSample:
    """One sample: its key, its sample JSON and its other members by extension."""

    key: str
    json: dict[str, Any]
    files: dict[str, bytes] = field(default_factory=dict)

    def members(self) -> list[tuple[str, bytes]]:
        """(extension, bytes) in sorted extension order, as webdataset writes them."""
        members = dict(self.files)
        members["json"] = json_bytes(self.json)
        for ext in members:
            if not ext or "/" in ext or ext != ext.lower():
                raise PixmoError(f"member extension {ext!r} must be lower-case", record=self.key)
        return sorted(members.items())


@dataclass(frozen=True)
class ShardStats:
    """The commit marker of one shard (schema ``shard_stats``)."""

    shard: str
    index: int
    samples: int
    bytes: int
    sha256: str
    first_key: str | None
    last_key: str | None
    counts: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION, **self.__dict__}

    @classmethod
    def from_json(cls, obj: dict[str, Any], *, file: str) -> ShardStats:
        validate("shard_stats", obj, file=file)
        return cls(**{k: v for k, v in obj.items() if k != "format_version"})


def manifest_row(sample: ShardSample, shard: str) -> dict[str, Any]:
    image = sample.json.get("image", {})
    row = {
        "key": sample.key,
        "shard": shard,
        "image_sha256": image.get("sha256"),
        "width": image.get("width"),
        "height": image.get("height"),
    }
    row.update({kind: len(sample.json.get(kind, ())) for kind in ANNOTATION_KINDS})
    return row


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


def file_sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


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

    @property
    def size(self) -> int:
        """Bytes of the archive so far (the end blocks not yet included)."""
        return self._tar.offset

    def add(self, sample: ShardSample) -> None:
        _add_members(self._tar, sample)
        self.rows.append(manifest_row(sample, self.name))
        for kind in ANNOTATION_KINDS:
            self.counts[kind] += len(sample.json.get(kind, ()))

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
    return sum(_BLOCK + -(-len(data) // _BLOCK) * _BLOCK for _, data in sample.members())


@dataclass(frozen=True)
class ShardConfig:
    """How samples are cut into shards."""

    max_samples: int = 1000
    max_bytes: int = 1 << 30
    prefix: str = "pixmo"
    validate_samples: bool = True  # check each sample JSON against the ``sample`` schema

    def __post_init__(self) -> None:
        if self.max_samples < 1:
            raise ConfigError(f"must be >= 1, got {self.max_samples}",
                              field="ShardConfig.max_samples")
        if self.max_bytes < _BLOCK * 4:
            raise ConfigError(f"must be >= {_BLOCK * 4}, got {self.max_bytes}",
                              field="ShardConfig.max_bytes")
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
        self.next_index = start_index
        self.written = WrittenShards()
        self._current: TarShard | None = None

    def write(self, sample: ShardSample) -> None:
        validate_key(sample.key)
        if self.config.validate_samples:
            validate("sample", sample.json, record_id=sample.key)
        current = self._current
        if current is not None and current.rows and (
            len(current.rows) >= self.config.max_samples
            or current.size + estimated_size(sample) > self.config.max_bytes
        ):
            self._commit()
        if self._current is None:
            self._current = TarShard(self.shards_dir, self.next_index, self.config.prefix)
            self.next_index += 1
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


# --------------------------------------------------------------------------- reading


def _open(url: str) -> BinaryIO:
    if is_remote(url):
        import fsspec

        return fsspec.open(url, "rb").open()
    return open(url.removeprefix("file://"), "rb")  # noqa: SIM115 - caller closes


def committed_shards(dataset_dir: str | os.PathLike[str]) -> list[ShardStats]:
    """Stats of every committed shard of a dataset directory, in index order."""
    source = os.fspath(dataset_dir)
    if is_remote(source):
        import fsspec

        fs, root = fsspec.core.url_to_fs(source)
        markers = sorted(fs.glob(f"{root.rstrip('/')}/{SHARDS_DIR}/*-[0-9]*.json"))
        read = fs.cat_file
    else:
        root = source.removeprefix("file://")
        markers = sorted(str(p) for p in Path(root, SHARDS_DIR).glob("*-[0-9]*.json"))

        def read(path: str) -> bytes:
            return Path(path).read_bytes()

    stats = []
    for marker in markers:
        try:
            obj = json.loads(read(marker))
        except json.JSONDecodeError as exc:
            raise PixmoError(f"stats file is not JSON: {exc}", file=marker) from exc
        stats.append(ShardStats.from_json(obj, file=marker))
    return sorted(stats, key=lambda s: s.index)


def expand_braces(pattern: str) -> list[str]:
    """Expand ``{000000..000012}`` numeric ranges and ``{a,b}`` lists in shard URLs."""
    match = re.search(r"\{([^{}]*)\}", pattern)
    if match is None:
        return [pattern]
    head, tail = pattern[: match.start()], pattern[match.end():]
    body = match.group(1)
    numeric = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if numeric:
        lo, hi = numeric.groups()
        width = len(lo) if lo.startswith("0") else 0
        choices = [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
    else:
        choices = body.split(",")
    return [out for choice in choices for out in expand_braces(head + choice + tail)]


def shard_urls(source: str | os.PathLike[str] | Iterable[str]) -> list[str]:
    """Shard URLs from a dataset directory (committed shards only), a brace
    pattern, or an explicit list of local paths and fsspec URLs."""
    if not isinstance(source, (str, os.PathLike)):
        return [url for item in source for url in shard_urls(item)]
    text = os.fspath(source)
    if text.endswith(".tar") or "{" in text:
        return expand_braces(text)
    base = text.rstrip("/")
    return [f"{base}/{SHARDS_DIR}/{stats.shard}" for stats in committed_shards(text)]


def _split_member(name: str) -> tuple[str, str]:
    base = name.rsplit("/", 1)[-1]
    if "." not in base:
        return name, ""
    key, ext = base.split(".", 1)
    return name[: len(name) - len(base)] + key, ext


def parse_sample(url: str, key: str, members: dict[str, bytes]) -> ShardSample:
    """A sample from its raw members: the JSON parsed, everything else bytes."""
    members = dict(members)
    raw = members.pop("json", None)
    if raw is None:
        raise PixmoError("sample has no .json member", file=url, record=key)
    try:
        obj = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PixmoError(f"sample JSON does not parse: {exc}", file=url, record=key,
                         field="json") from exc
    return ShardSample(key=key, json=obj, files=members)


def iter_members(url: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) for each sample of one tar, in stored order.

    A broken tar ends the iteration with a ``PixmoError``; a broken sample does
    not, since nothing here decodes members (``parse_sample`` does)."""
    key: str | None = None
    members: dict[str, bytes] = {}
    seen: set[str] = set()
    with _open(url) as fh:
        try:
            with tarfile.open(fileobj=fh, mode="r|") as tar:
                for info in tar:
                    if not info.isfile():
                        continue
                    member_key, ext = _split_member(info.name)
                    if not ext or member_key.startswith("__"):
                        continue
                    if member_key != key:
                        if key is not None:
                            yield key, members
                        if member_key in seen:
                            raise PixmoError("members of this sample are not adjacent",
                                             file=url, record=member_key)
                        seen.add(member_key)
                        key, members = member_key, {}
                    if ext in members:
                        raise PixmoError(f"duplicate member .{ext}", file=url, record=key)
                    data = tar.extractfile(info)
                    members[ext] = data.read() if data is not None else b""
        except tarfile.TarError as exc:
            raise PixmoError(f"corrupt tar: {exc}", file=url, record=key) from exc
        if key is not None:
            yield key, members


def iter_shard(url: str) -> Iterator[ShardSample]:
    """Samples of one tar in stored order; members grouped by key."""
    for key, members in iter_members(url):
        yield parse_sample(url, key, members)


def iter_samples(source: str | os.PathLike[str] | Iterable[str]) -> Iterator[ShardSample]:
    """Every sample of a dataset directory, brace pattern or list of shard URLs."""
    for url in shard_urls(source):
        yield from iter_shard(url)


# --------------------------------------------------------------------------- tables


def _manifest_arrow_schema() -> Any:
    import pyarrow as pa

    types = {"string": pa.string(), "integer": pa.int64()}
    schema = load_schema("manifest_row")
    return pa.schema(
        [
            pa.field(name, types[prop["type"]], nullable=False)
            for name, prop in schema["properties"].items()
        ]
    )


def _write_parquet(table: Any, path: str | os.PathLike[str]) -> None:
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(table, buf)
    atomic_write_bytes(path, buf.getvalue())


def write_manifest(rows: Iterable[dict[str, Any]], path: str | os.PathLike[str],
                   row_group: int = 1024) -> None:
    """Write ``manifest.parquet`` atomically, each row checked against its schema.
    Rows stream through in groups of ``row_group``, so a manifest of any length
    is written in bounded memory."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = _manifest_arrow_schema()
    with atomic_open(path) as fh, pq.ParquetWriter(fh, schema) as writer:
        group: list[dict[str, Any]] = []
        groups = 0
        for row in rows:
            validate("manifest_row", row, file=os.fspath(path), record_id=row.get("key"))
            group.append(row)
            if len(group) == row_group:
                writer.write_table(pa.Table.from_pylist(group, schema=schema))
                group, groups = [], groups + 1
        if group or not groups:
            writer.write_table(pa.Table.from_pylist(group, schema=schema))


def read_manifest(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def write_rejects(rows: Iterable[dict[str, str]], path: str | os.PathLike[str]) -> None:
    """Write ``rejects.parquet`` atomically (schema ``reject``)."""
    import pyarrow as pa

    rows = list(rows)
    for row in rows:
        validate("reject", row, file=os.fspath(path), record_id=row.get("record"))
    names = list(load_schema("reject")["properties"])
    schema = pa.schema([pa.field(name, pa.string(), nullable=False) for name in names])
    _write_parquet(pa.Table.from_pylist(rows, schema=schema), path)


def read_rejects(path: str | os.PathLike[str]) -> list[dict[str, str]]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def write_dataset_json(description: dict[str, Any], path: str | os.PathLike[str]) -> None:
    validate("dataset", description, file=os.fspath(path))
    atomic_write_bytes(path, json.dumps(description, indent=2, sort_keys=True).encode() + b"\n")


def read_dataset_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise PixmoError(f"not JSON: {exc}", file=os.fspath(path)) from exc
    validate("dataset", obj, file=os.fspath(path))
    return obj


def describe(name: str, stats: list[ShardStats], **extra: Any) -> dict[str, Any]:
    """A ``dataset.json`` body for a set of committed shards."""
    counts = {
        "samples": sum(s.samples for s in stats),
        "shards": len(stats),
        "bytes": sum(s.bytes for s in stats),
    }
    for kind in ANNOTATION_KINDS:
        counts[kind] = sum(s.counts[kind] for s in stats)
    shards = [
        {"shard": s.shard, "samples": s.samples, "bytes": s.bytes, "sha256": s.sha256}
        for s in stats
    ]
    return {"format_version": FORMAT_VERSION, "name": name, "counts": counts, "shards": shards,
            **extra}


def write_dataset(out_dir: str | os.PathLike[str], samples: Iterable[ShardSample], *,
                  name: str, config: ShardConfig | None = None,
                  rejects: Iterable[dict[str, str]] = (), **extra: Any) -> dict[str, Any]:
    """Write a whole dataset directory in one process: shards, manifest,
    rejects and dataset.json (written last). Returns the dataset.json body."""
    out = Path(out_dir)
    with ShardWriter(out, config) as writer:
        for sample in samples:
            writer.write(sample)
    written = writer.written
    write_manifest(written.rows, out / MANIFEST)
    rejects = list(rejects)
    write_rejects(rejects, out / REJECTS)
    extra.setdefault("engine", "local")
    description = describe(name, written.stats, **extra)
    description["counts"]["rejects"] = len(rejects)
    write_dataset_json(description, out / DATASET_JSON)
    return description
