"""The build's output folder: what it holds when a build starts, shards written or kept,
and the tables and dataset.json that finish it.

Commit order in the output: each shard's tar, then its marker; manifest and
rejects; ``dataset.json`` last, so a folder with a dataset.json is finished.
``prepare_output`` decides, by mode, what an earlier run left that a build may
keep; ``write_or_keep`` writes one shard (or proves a committed one current);
``finish`` writes the tables and checks the ledger.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import json
import logging
import os
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import groupby
from operator import attrgetter, itemgetter
from pathlib import Path
from typing import Any

from pixmo import remote
from pixmo.atomic import PARTIAL_SUFFIX
from pixmo.build.config import EXTEND_FREE, SPEED_ONLY, BuildConfig
from pixmo.build.images import STAGING, attached
from pixmo.build.parts import PlannedSample
from pixmo.dataset.format import (
    DATASET_JSON,
    MANIFEST,
    REJECTS,
    SHARDS_DIR,
    ShardSample,
    ShardStats,
    json_bytes,
)
from pixmo.dataset.reader import committed_shards
from pixmo.dataset.tables import describe, iter_rows, manifest_row, read_dataset_json, write_tables
from pixmo.dataset.writer import tar_digest, write_shard
from pixmo.errors import PixmoError
from pixmo.rejects import Reason, Reject, Tally, ledger, merge_runs, reject_rows

log = logging.getLogger(__name__)

MODES = ("resume", "overwrite", "extend")
REJECT_RUNS = f"{STAGING}/rejects"
BUILD_CONFIG = f"{STAGING}/build_config.json"  # the config of a run not yet finished
MAX_OPEN_RUNS = 256  # runs merged at once; more are merged in rounds


@dataclass(frozen=True)
class BaseKeys:
    """The keys of the dataset being extended, without holding them: each of its
    shards' lowest and highest key and a file of the shard's keys in the staging
    folder, read when a key falls in that range (the last few read are kept).
    Its size grows with the shards, not the samples. Builds and imports write
    each shard's keys in order, so shards' ranges do not overlap and a key
    leads to one file per build; shards in no key order are all read."""

    out_dir: str = ""
    shards: tuple[tuple[str, str, int, str], ...] = ()  # lowest, highest key, index, sha256

    def __contains__(self, key: object) -> bool:
        return any(first <= key <= last and key in _shard_keys(self.out_dir, index, sha256)
                   for first, last, index, sha256 in self.shards)


@functools.lru_cache(maxsize=16)
def _shard_keys(out_dir: str, index: int, sha256: str) -> frozenset[str]:
    """One base shard's keys (``sha256``, its tar's, keys the cache to its content)."""
    return frozenset(remote.Folder(out_dir).read_bytes(_keys_name(index)).decode().split())


@dataclass
class Previous:
    """What an output directory already holds when a build starts."""

    # committed shards this build may keep (if current) or must remove
    committed: dict[int, ShardStats] = field(default_factory=dict)
    # extend mode: the finished dataset being added to, which stays as it is
    base: dict[int, ShardStats] = field(default_factory=dict)
    keys: BaseKeys = BaseKeys()
    rejects: int | None = None  # rows of rejects.parquet its dataset.json accounts for
    ledger: list[dict[str, Any]] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=dict)  # by reason, in its samples

    @property
    def start_index(self) -> int:
        """Where new shards are numbered from: after the dataset being extended."""
        return max(self.base) + 1 if self.base else 0


def prepare_output(out_dir: str | os.PathLike[str], mode: str,
                   cfg: BuildConfig | None = None) -> Previous:
    """Make ``out_dir`` (a path or URL) ready for a build.

    ``overwrite`` removes an earlier build. ``resume`` (the default) keeps
    committed shards, which are reused where the new assignment gives them
    the same samples, and removes what an interrupted run left half-done.
    ``extend`` keeps a finished dataset and adds new images as new shards;
    what an interrupted extend committed beyond the shards, manifest rows
    and rejects its dataset.json accounts for is treated as in ``resume``.
    Except in ``extend``, dataset.json goes first: until the build has
    finished again the folder is not a finished dataset. With ``cfg``, a resumed or
    extended build whose config differs from the one the earlier run recorded is refused
    (``refuse_other_config``), and this run records its own.
    """
    if mode not in MODES:
        raise PixmoError(f"mode must be one of {', '.join(MODES)}, got {mode!r}",
                         field="mode")
    out = remote.Folder(os.fspath(out_dir))
    if cfg is not None:
        refuse_other_config(out_dir, cfg, mode)
    if mode != "extend":
        out.remove(DATASET_JSON)
    if mode == "overwrite":
        for name in [*out.glob(f"{SHARDS_DIR}/*"), MANIFEST, REJECTS]:
            out.remove(name)  # markers (.json) sort before their tars
        out.remove_tree(STAGING)
    out.remove_tree(REJECT_RUNS)  # a killed run's: this run stages its own
    out.makedirs(SHARDS_DIR)
    for leftover in out.glob(f"{SHARDS_DIR}/*{PARTIAL_SUFFIX}"):  # killed writers
        out.remove(leftover)
    if cfg is not None and mode != "extend":
        out.write_bytes(BUILD_CONFIG, json_bytes(cfg.to_json()))
    committed = {s.index: s for s in committed_shards(out_dir)}
    marked = {f"{SHARDS_DIR}/{s.shard}" for s in committed.values()}
    for tar in out.glob(f"{SHARDS_DIR}/*.tar"):
        if tar not in marked:
            out.remove(tar)  # renamed but never marked: not trusted
    if mode != "extend":
        return Previous(committed=committed)
    if not out.is_file(DATASET_JSON):
        raise PixmoError("extend needs a finished dataset (no dataset.json)",
                         file=os.fspath(out_dir))
    with out.local_copy(DATASET_JSON) as path:
        description = read_dataset_json(path)
    names = {s["shard"] for s in description["shards"]}
    base = {i: s for i, s in committed.items() if s.shard in names}
    return Previous(committed={i: s for i, s in committed.items() if s.shard not in names},
                    base=base, keys=BaseKeys(os.fspath(out_dir), _stage_keys(out, base)),
                    rejects=description["counts"].get("rejects"),
                    ledger=description.get("ledger", []),
                    failures=description.get("failures_by_reason", {}))


def refuse_other_config(out_dir: str | os.PathLike[str], cfg: BuildConfig, mode: str) -> None:
    """Unless in ``overwrite`` mode, refuse a config other than the one an earlier run
    recorded: a finished one's in dataset.json, an interrupted one's in the staging folder
    (``extend`` compares with dataset.json, its input folder aside)."""
    out = remote.Folder(os.fspath(out_dir))
    if mode == "overwrite":
        return
    if out.is_file(DATASET_JSON):
        with out.local_copy(DATASET_JSON) as path:
            recorded = read_dataset_json(path).get("build_config")
    elif out.is_file(BUILD_CONFIG) and mode == "resume":
        recorded = json.loads(out.read_bytes(BUILD_CONFIG))
    else:
        return
    if recorded is not None:
        cfg.refuse_other(recorded, out.url, EXTEND_FREE if mode == "extend" else SPEED_ONLY)


def _keys_name(index: int) -> str:
    return f"{STAGING}/keys/{index:06d}.txt"


def _stage_keys(out: remote.Folder, base: dict[int, ShardStats]
                ) -> tuple[tuple[str, str, int, str], ...]:
    """Each base shard's keys, sorted, to a file of the staging folder, streamed
    from the manifest's key and shard columns (in shard order: one shard's keys
    in memory); returns each shard's lowest and highest key, index and sha256.
    (A shard's keys need not be in order: ``write_dataset`` keeps its input's.)"""
    index = {s.shard: i for i, s in base.items()}
    staged: set[str] = set()
    shards = []
    with out.local_copy(MANIFEST) as path:
        for shard, rows in groupby(iter_rows(path, ["key", "shard"]), itemgetter("shard")):
            if shard in staged:
                raise PixmoError(f"rows of {shard} are not together", file=MANIFEST)
            staged.add(shard)
            if shard in index:
                keys = sorted(r["key"] for r in rows)
                out.write_bytes(_keys_name(index[shard]), "\n".join(keys).encode())
                shards.append((keys[0], keys[-1], index[shard], base[index[shard]].sha256))
    return tuple(shards)


def exclude_known(sample: ShardSample, previous: Previous) -> ShardSample | list[Reject]:
    """In extend mode an image already in the dataset cannot change: its new
    records are rejected, never silently dropped."""
    if sample.key not in previous.keys:
        return sample
    return [Reject("join", Reason.ALREADY_IN_DATASET,
                   f"image {sample.json['image']['source']} is sample {sample.key} of an "
                   "earlier build", s["file"], s["record"]) for s in sample.json["sources"]]


def stage_rejects(out_dir: str | os.PathLike[str], rejects: Iterable[Reject]) -> int:
    """Rejects of one piece of work (a bundle, a block), in input order, as a run
    file of the staging folder that ``staged_rejects`` merges: rejects go to
    their file, never to the engine's driver. The file is named by its content,
    so work done twice (a retried bundle) writes the same file again. Returns
    how many."""
    rows = reject_rows(rejects)
    if rows:
        _write_run(remote.Folder(os.fspath(out_dir)), rows)
    return len(rows)


def _write_run(out: remote.Folder, rows: Iterable[dict[str, str]]) -> None:
    data = b"".join(json_bytes(row) + b"\n" for row in rows)
    out.write_bytes(f"{REJECT_RUNS}/{hashlib.sha256(data).hexdigest()[:32]}.jsonl", data)


def staged_rejects(out_dir: str | os.PathLike[str]) -> Iterator[Reject]:
    """Every staged run merged in input order, one line of each open at a time
    (``finish(..., in_order=True)`` streams them to rejects.parquet). A reject
    staged twice (work retried and cut differently) comes out once: each input
    record is rejected at most once."""
    out = remote.Folder(os.fspath(out_dir))
    runs = out.glob(f"{REJECT_RUNS}/*.jsonl")
    while len(runs) > MAX_OPEN_RUNS:  # merge in rounds: never too many files open
        merged = [runs[i:i + MAX_OPEN_RUNS] for i in range(0, len(runs), MAX_OPEN_RUNS)]
        for group in merged:
            _write_run(out, map(Reject.to_row, _merged(out, group)))
            for name in group:
                out.remove(name)
        runs = out.glob(f"{REJECT_RUNS}/*.jsonl")
    return _merged(out, runs)


def _merged(out: remote.Folder, runs: Sequence[str]) -> Iterator[Reject]:
    last = None
    for reject in merge_runs(_read_run(out, name) for name in runs):
        if reject != last:
            yield reject
        last = reject


def _read_run(out: remote.Folder, name: str) -> Iterator[Reject]:
    with out.open(name) as fh:
        for line in fh:
            row = json.loads(line)
            yield Reject(row["stage"], Reason(row["reason"]), row["detail"], row["source"],
                         row["record"])


def write_or_keep(index: int, samples: Iterable[PlannedSample], out_dir: str | os.PathLike[str],
                  cfg: BuildConfig, old: ShardStats | None) -> ShardStats:
    """Write shard ``index``, unless ``old``, the committed shard of that index
    (``Previous.committed``), holds exactly these samples: committed shards are
    never rewritten. "Exactly" is proven by hash: the tar these samples would
    make, the marker and the file in the output folder must all agree. A shard
    that is rewritten is unmarked first, so no reader pairs its old marker with
    new bytes. The shard's manifest rows go to the staging folder, where
    ``finish`` reads them one shard at a time: the engine's driver never holds
    a row per sample."""
    samples = sorted(samples, key=lambda s: s.key)
    out = remote.Folder(os.fspath(out_dir))
    stats = _keep(old, samples, cfg, out) if old is not None else None
    if stats is not None:
        rows = [manifest_row(ShardSample(s.key, json.loads(s.json)), stats.shard)
                for s in samples]
    elif not out.remote:
        stats, rows = write_shard(out.local, index, attached(samples, cfg, out),
                                  cfg.shards.prefix)
    else:
        with tempfile.TemporaryDirectory(prefix="pixmo-shard-") as tmp:
            stats, rows = write_shard(tmp, index, attached(samples, cfg, out),
                                      cfg.shards.prefix)
            shard = Path(tmp, SHARDS_DIR, stats.shard)
            out.put(shard, f"{SHARDS_DIR}/{stats.shard}")
            out.put(shard.with_suffix(".json"),
                    f"{SHARDS_DIR}/{shard.with_suffix('.json').name}")
    out.write_bytes(_rows_name(stats.index), json_bytes(rows))
    return stats


def _keep(old: ShardStats, samples: list[PlannedSample], cfg: BuildConfig,
          out: remote.Folder) -> ShardStats | None:
    """``old`` if it holds exactly ``samples``; otherwise unmark it and None."""
    tar = f"{SHARDS_DIR}/{old.shard}"
    if (tar_digest(attached(samples, cfg, out)) == (old.sha256, old.bytes)
            and out.sha256(tar) == old.sha256):
        log.info("keeping committed %s", old.shard)
        return old
    out.remove(tar.removesuffix(".tar") + ".json")
    return None


def _rows_name(index: int) -> str:
    return f"{STAGING}/rows/{index:06d}.json"


def _manifest_rows(out: remote.Folder, stats: Sequence[ShardStats], previous: Previous,
                   manifest: str | None) -> Iterator[dict[str, Any]]:
    """Manifest rows in shard and key order, one shard's rows in memory at a time:
    the dataset being extended keeps its own rows, streamed from its ``manifest``
    (in shard order too), new shards' rows come from the staging folder."""
    base = groupby(iter_rows(manifest) if manifest else iter(()), itemgetter("shard"))
    for shard in sorted(stats, key=attrgetter("shard")):
        if shard.index in previous.base:
            rows = next((list(g) for name, g in base if name == shard.shard),
                        []) if shard.samples else []
        else:
            rows = json.loads(out.read_bytes(_rows_name(shard.index)))
        yield from sorted(rows, key=itemgetter("key"))


def finish(out_dir: str | os.PathLike[str], cfg: BuildConfig, engine: str,
           written: Sequence[ShardStats], rejects: Iterable[Reject], read: Counter[str],
           accepted: Counter[str], failures: Counter[str], previous: Previous,
           stage_seconds: dict[str, float] | None = None, *,
           in_order: bool = False) -> dict[str, Any]:
    """Write manifest, rejects and dataset.json (last); check the ledger identity
    before dataset.json. ``failures`` counts, by reason, what this run's samples
    record in their ``failures``: their records are accepted, so they are counted
    apart. The tables stream to their files: rejects ``in_order`` (input order,
    e.g. ``merge_runs`` of per-partition runs) are never held, others are sorted
    here; the extended dataset's rows are copied from its own tables."""
    out = remote.Folder(os.fspath(out_dir))
    stats = sorted([*previous.base.values(), *written], key=attrgetter("index"))
    for stale in set(previous.committed) - {s.index for s in stats}:
        # an earlier run's shard beyond this run's assignment: unmark, then remove
        tar = f"{SHARDS_DIR}/{previous.committed[stale].shard}"
        out.remove(tar.removesuffix(".tar") + ".json")
        out.remove(tar)
    new, kept = Tally(), Tally()
    rows = new.count(map(Reject.to_row, rejects) if in_order else reject_rows(rejects))

    def description() -> dict[str, Any]:  # once the rejects have streamed past
        books = ledger(read, accepted, new.by_source)
        reasons = kept.by_reason + new.by_reason
        body = describe(cfg.name, stats, engine=engine, build_config=cfg.to_json(),
                        ledger=[*previous.ledger, *books],
                        rejects_by_reason=dict(sorted(reasons.items())))
        body["counts"]["rejects"] = sum(reasons.values())
        failed = Counter(previous.failures) + failures
        body["counts"]["failures"] = sum(failed.values())
        body["failures_by_reason"] = dict(sorted(failed.items()))
        if stage_seconds is not None:
            body["stage_seconds"] = {k: round(v, 3) for k, v in sorted(stage_seconds.items())}
        return body

    with contextlib.ExitStack() as stack:
        old_manifest = None
        if previous.base:  # extend: the dataset's own tables, read as they are replaced
            old_manifest = stack.enter_context(out.local_copy(MANIFEST))
            old = iter_rows(stack.enter_context(out.local_copy(REJECTS)), limit=previous.rejects)
            rows = itertools.chain(kept.count(old), rows)
        written_description = write_tables(out_dir, _manifest_rows(
            out, stats, previous, old_manifest), rows, description)
    out.remove_tree(STAGING)
    return written_description
