"""What ``pixmo validate`` runs: is a built dataset directory whole and consistent.

``verify`` backs ``pixmo validate`` and ``summarize`` backs ``pixmo inspect``. ``verify``
checks every layer a build writes: each tar against its commit marker
(size, sha256, sample count, first and last key), every sample JSON against
the ``sample`` schema and its image bytes against the recorded hash, the
manifest against the shards, and dataset.json against both. Checking one
record against its JSON Schema is ``pixmo.schema``'s job; this module calls it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pixmo.atomic import PARTIAL_SUFFIX
from pixmo.dataset.format import (
    ANNOTATION_KINDS,
    DATASET_JSON,
    IMAGE_EXTENSIONS,
    MANIFEST,
    REJECTS,
    SHARDS_DIR,
    ShardSample,
    ShardStats,
)
from pixmo.dataset.reader import committed_shards, iter_shard
from pixmo.dataset.tables import iter_rows, read_dataset_json
from pixmo.errors import PixmoError
from pixmo.remote import file_sha256
from pixmo.schema import check


@dataclass
class DatasetSummary:
    name: str
    shards: list[ShardStats]
    counts: dict[str, int]
    rejects_by_reason: dict[str, int]
    failures_by_reason: dict[str, int]  # what stages could not add to accepted samples
    collection_methods: dict[str, int]
    example: dict[str, Any] | None = None

    @property
    def samples(self) -> int:
        return sum(s.samples for s in self.shards)

    @property
    def bytes(self) -> int:
        return sum(s.bytes for s in self.shards)


def _require_dataset(path: Path) -> None:
    if not (path / SHARDS_DIR).is_dir() and not (path / DATASET_JSON).is_file():
        raise PixmoError("not a dataset directory (no shards/ and no dataset.json)",
                         file=os.fspath(path))


def find_sample(dataset_dir: str | os.PathLike[str], key: str) -> ShardSample:
    """One sample by key: the manifest says which shard holds it, so only that
    shard is read."""
    root = Path(dataset_dir)
    _require_dataset(root)
    shards = [s.shard for s in committed_shards(root)]
    if (root / MANIFEST).is_file():
        listed = [row["shard"] for row in iter_rows(root / MANIFEST, ["key", "shard"])
                  if row["key"] == key]
        shards = listed or shards
    for shard in shards:
        for sample in iter_shard(os.fspath(root / SHARDS_DIR / shard)):
            if sample.key == key:
                return sample
    raise PixmoError("no sample with this key", file=os.fspath(root), record=key)


def summarize(dataset_dir: str | os.PathLike[str]) -> DatasetSummary:
    """Counts from the commit markers and the rejects' reason column, and the
    first sample in full: the only tar read, and only up to that sample (a shard
    whose marker predates its point-method and failure counts is read whole)."""
    root = Path(dataset_dir)
    _require_dataset(root)
    stats = committed_shards(root)
    name = root.name
    if (root / DATASET_JSON).is_file():
        name = read_dataset_json(root / DATASET_JSON)["name"]
    counts = {kind: sum(s.counts[kind] for s in stats) for kind in ANNOTATION_KINDS}
    rejects: Counter[str] = Counter()
    if (root / REJECTS).is_file():
        rejects.update(row["reason"] for row in iter_rows(root / REJECTS, ["reason"]))
    methods: Counter[str] = Counter()
    failures: Counter[str] = Counter()
    for shard in stats:
        if shard.point_methods is None or shard.failures is None:
            _count_samples(root / SHARDS_DIR / shard.shard, methods, failures)
        else:
            methods.update(shard.point_methods)
            failures.update(shard.failures)
    first = next((s for s in stats if s.samples), None)
    example = None if first is None else _first_sample(root / SHARDS_DIR / first.shard)
    return DatasetSummary(name=name, shards=stats, counts=counts,
                          rejects_by_reason=dict(sorted(rejects.items())),
                          failures_by_reason=dict(sorted(failures.items())),
                          collection_methods=dict(sorted(methods.items())), example=example)


def _first_sample(path: Path) -> dict[str, Any] | None:
    """The JSON of a shard's first sample; the tar is read no further."""
    samples = iter_shard(os.fspath(path))
    try:
        return next(samples).json
    except StopIteration:
        return None
    finally:
        samples.close()


def _count_samples(path: Path, methods: Counter[str], failures: Counter[str]) -> None:
    """Point label sets by collection method and failures by reason, from the samples."""
    for sample in iter_shard(os.fspath(path)):
        methods.update(p.get("collection_method", "?") for p in sample.json.get("points", ()))
        failures.update(f["reason"] for f in sample.json.get("failures", ()))


class _Seen:
    """The samples found in the shards, by key: shard, annotation counts, and
    whether a manifest row lists it; kept in a SQLite file."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        db.execute("CREATE TABLE samples (key TEXT PRIMARY KEY, shard TEXT, counts TEXT, "
                   "listed INTEGER DEFAULT 0)")
        self.failures = 0

    def shard_of(self, key: str) -> str | None:
        row = self.db.execute("SELECT shard FROM samples WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def add(self, key: str, shard: str, counts: dict[str, int]) -> None:
        self.db.execute("INSERT OR REPLACE INTO samples (key, shard, counts) VALUES (?, ?, ?)",
                        (key, shard, json.dumps(counts)))

    def list_row(self, key: str) -> tuple[str, dict[str, int]] | None:
        """The shard and counts of the sample a manifest row names, marked as listed."""
        row = self.db.execute("SELECT shard, counts FROM samples WHERE key = ?",
                              (key,)).fetchone()
        if row is None:
            return None
        self.db.execute("UPDATE samples SET listed = 1 WHERE key = ?", (key,))
        return row[0], json.loads(row[1])

    def unlisted(self) -> Iterator[tuple[str, str]]:
        yield from self.db.execute(
            "SELECT key, shard FROM samples WHERE listed = 0 ORDER BY key")


@contextlib.contextmanager
def _seen() -> Iterator[_Seen]:
    with tempfile.TemporaryDirectory(prefix="pixmo-verify-") as tmp:
        db = sqlite3.connect(os.path.join(tmp, "samples.db"))
        try:
            yield _Seen(db)
        finally:
            db.close()


def _verify_shard(path: Path, stats: ShardStats, seen: _Seen, problems: list[str]) -> None:
    where = f"{SHARDS_DIR}/{stats.shard}"
    if not path.is_file():
        problems.append(f"{where}: commit marker exists but the tar is missing")
        return
    size = path.stat().st_size
    if size != stats.bytes:
        problems.append(f"{where}: size {size} bytes, stats say {stats.bytes}")
    digest = file_sha256(path)
    if digest != stats.sha256:
        problems.append(f"{where}: sha256 {digest} does not match stats {stats.sha256}")
    keys: list[str] = []
    try:
        for sample in iter_shard(os.fspath(path)):
            keys.append(sample.key)
            _verify_sample(where, sample.key, sample.json, sample.files, problems)
            other = seen.shard_of(sample.key)
            if other is not None:
                problems.append(f"{where}: key {sample.key} also in {other}")
            seen.add(sample.key, stats.shard,
                     {kind: len(sample.json.get(kind, ())) for kind in ANNOTATION_KINDS})
            seen.failures += len(sample.json.get("failures", ()))
    except PixmoError as exc:
        problems.append(f"{where}: unreadable after {len(keys)} samples: {exc.reason}")
        return
    if len(keys) != stats.samples:
        problems.append(f"{where}: {len(keys)} samples, stats say {stats.samples}")
    if keys and (keys[0] != stats.first_key or keys[-1] != stats.last_key):
        problems.append(f"{where}: first/last key {keys[0]}/{keys[-1]}, stats say "
                        f"{stats.first_key}/{stats.last_key}")


def _verify_sample(where: str, key: str, obj: Any, files: dict[str, bytes],
                   problems: list[str]) -> None:
    violation = check("sample", obj)
    if violation is not None:
        problems.append(violation.one_line(file=where, record=key))
        return
    if obj["key"] != key:
        problems.append(f"{where}, record {key}: field key: JSON says {obj['key']!r}")
    images = [ext for ext in files if ext in IMAGE_EXTENSIONS]
    if len(images) != 1:
        problems.append(f"{where}, record {key}: expected one image member, found {images}")
        return
    digest = hashlib.sha256(files[images[0]]).hexdigest()
    if digest != obj["image"]["sha256"]:
        problems.append(f"{where}, record {key}: field image.sha256: image bytes hash to {digest}")


def _verify_manifest(root: Path, seen: _Seen, problems: list[str]) -> None:
    path = root / MANIFEST
    if not path.is_file():
        problems.append(f"{MANIFEST}: missing")
        return
    for index, row in enumerate(iter_rows(path)):
        violation = check("manifest_row", row)
        if violation is not None:
            problems.append(violation.one_line(file=MANIFEST, record=index))
            continue
        key = row["key"]
        found = seen.list_row(key)
        if found is None:
            problems.append(f"{MANIFEST}, record {key}: no sample with this key in any shard")
            continue
        shard, counts = found
        if row["shard"] != shard:
            problems.append(f"{MANIFEST}, record {key}: field shard: {row['shard']}, "
                            f"sample is in {shard}")
        for kind, n in counts.items():
            if row[kind] != n:
                problems.append(f"{MANIFEST}, record {key}: field {kind}: {row[kind]}, "
                                f"sample has {n}")
    for key, shard in seen.unlisted():
        problems.append(f"{MANIFEST}: sample {key} ({shard}) has no manifest row")


def _verify_description(root: Path, stats: list[ShardStats], seen: _Seen,
                        problems: list[str]) -> None:
    try:
        description = read_dataset_json(root / DATASET_JSON)
    except FileNotFoundError:
        problems.append(f"{DATASET_JSON}: missing")
        return
    except PixmoError as exc:
        problems.append(str(exc))
        return
    listed = {s["shard"]: s for s in description["shards"]}
    committed = {s.shard: s for s in stats}
    for name in sorted(set(listed) - set(committed)):
        problems.append(f"{DATASET_JSON}: lists {name}, which is not a committed shard")
    for name in sorted(set(committed) - set(listed)):
        problems.append(f"{DATASET_JSON}: does not list committed shard {name}")
    for name in sorted(set(listed) & set(committed)):
        if listed[name]["sha256"] != committed[name].sha256:
            problems.append(f"{DATASET_JSON}: sha256 of {name} differs from its stats file")
    total = sum(s.samples for s in stats)
    if description["counts"]["samples"] != total:
        problems.append(f"{DATASET_JSON}: counts.samples {description['counts']['samples']}, "
                        f"shards hold {total}")
    failures = description["counts"].get("failures")
    if failures is not None and failures != seen.failures:
        problems.append(f"{DATASET_JSON}: counts.failures {failures}, samples record "
                        f"{seen.failures}")


def verify(dataset_dir: str | os.PathLike[str]) -> list[str]:
    """Every problem found in a dataset directory, one line each; empty when intact."""
    root = Path(dataset_dir)
    _require_dataset(root)
    problems: list[str] = []
    try:
        stats = committed_shards(root)
    except PixmoError as exc:
        return [str(exc)]
    indices = [s.index for s in stats]
    if indices != list(range(len(indices))):
        problems.append(f"{SHARDS_DIR}/: shard indices are not contiguous from 0: {indices}")
    committed = {s.shard for s in stats}
    for tar in sorted((root / SHARDS_DIR).glob("*.tar")):
        if tar.name not in committed:
            problems.append(f"{SHARDS_DIR}/{tar.name}: no commit marker (unfinished shard)")
    for leftover in sorted((root / SHARDS_DIR).glob(f"*{PARTIAL_SUFFIX}")):
        problems.append(f"{SHARDS_DIR}/{leftover.name}: leftover of an interrupted writer")
    with _seen() as seen:
        for shard in stats:
            _verify_shard(root / SHARDS_DIR / shard.shard, shard, seen, problems)
        _verify_manifest(root, seen, problems)
        _verify_description(root, stats, seen, problems)
    return problems
