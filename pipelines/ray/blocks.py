"""The Ray build's blocks and the functions Ray runs on them (``pipelines.ray``).

Every row of every block has one schema (``SCHEMA``): a group, a kind, a name,
a count and a blob. A data row's blob is a pickled list of packed parts
(``pixmo.build.parts``) bound for one group of the next grouping, so a grouping
moves a few rows per block, not a row per record, and the function of a group
sorts out its own keys. Book rows (group ``BOOK``) count records per file,
failures per reason, samples and seconds per stage; every function hands them
on untouched. Rejects never travel: the function that makes them stages them
(``stage_rejects``). Each function takes and returns a ``pyarrow.Table``.
"""

from __future__ import annotations

import itertools
import pickle
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping
from functools import lru_cache
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pixmo import build
from pixmo.build.output import stage_rejects
from pixmo.build.parts import pack_fields, unpack_fields
from pixmo.captions import CaptionWriter
from pixmo.dataset.cutting import partition_of
from pixmo.images import LoadedImage
from pixmo.rejects import Reject

GROUP, KIND, NAME, COUNT, BLOB = "group", "kind", "name", "count", "blob"
SCHEMA = pa.schema([(GROUP, pa.int64()), (KIND, pa.string()), (NAME, pa.string()),
                    (COUNT, pa.float64()), (BLOB, pa.binary())])
BOOK = -1  # the group of book rows
# book kinds: records read per file, accepted per file, sample failures per reason,
# samples made, seconds per stage
READ, ACCEPTED, FAILED, SAMPLES, SECONDS = "read", "accepted", "failed", "samples", "seconds"
# data kinds: records, (image, records) pairs to annotate, image parts, planned samples,
# their (key, size), a key range's shard plan, a written shard's stats
RECORDS, PAIRS, PARTS, PLANNED, SIZES, PLAN, WRITTEN = (
    "records", "pairs", "parts", "planned", "sizes", "plan", "written")
READ_ROWS = 10_000  # records a read task hands on per block
PAIRS_PER_BATCH = 8  # images (with their records) per call of a transcription actor
STAGES = ("read", "image+annotate+join", "write")


class Rows:
    """The rows of one output block, built up."""

    def __init__(self) -> None:
        self.columns: dict[str, list[Any]] = {name: [] for name in SCHEMA.names}

    def add(self, group: int, kind: str, name: str = "", count: float = 0.0,
            blob: bytes = b"") -> None:
        for column, value in zip(SCHEMA.names, (group, kind, name, count, blob), strict=True):
            self.columns[column].append(value)

    def book(self, kind: str, counts: Mapping[str, float]) -> None:
        for name, count in counts.items():
            self.add(BOOK, kind, name, count)

    def data(self, group: int, kind: str, items: list[Any]) -> None:
        self.add(group, kind, blob=pickle.dumps(items, protocol=pickle.HIGHEST_PROTOCOL))

    def table(self, passed: pa.Table | None = None) -> pa.Table:
        """These rows, after ``passed`` (book rows handed on) if given."""
        table = pa.table(self.columns, schema=SCHEMA)
        return table if passed is None else pa.concat_tables([passed, table])


def items(table: pa.Table, kind: str | None = None) -> Iterator[Any]:
    """The packed parts in a table's data rows (of one ``kind``, if given)."""
    if kind is not None:
        table = table.filter(pc.equal(table[KIND], kind))
    for blob in table[BLOB].to_pylist():
        if blob:
            yield from pickle.loads(blob)


def books(table: pa.Table) -> pa.Table:
    return table.filter(pc.equal(table[GROUP], BOOK))


def read_files(batch: pa.Table, raw_dir: str, out_dir: str, groups: int) -> Iterator[pa.Table]:
    """Records of each input file named in ``batch``, schema-checked, in blocks of
    ``READ_ROWS``, bound for the group of their image reference; a book row of
    the records read per file."""
    for name in batch["file"].to_pylist():
        records, read, seconds = build.read_raw(raw_dir, name), 0, 0.0
        while True:
            start = time.perf_counter()
            chunk = list(itertools.islice(records, READ_ROWS))
            if not chunk:
                break
            read += len(chunk)
            rows, rejects = Rows(), []
            by_group: dict[int, list[build.Packed]] = defaultdict(list)
            for item in chunk:
                out = item if isinstance(item, Reject) else build.check_record(item)
                if isinstance(out, Reject):
                    rejects.append(out)
                else:
                    by_group[zlib.crc32(out.image.encode()) % groups].append(out.pack())
            stage_rejects(out_dir, rejects)
            for group, packed in sorted(by_group.items()):
                rows.data(group, RECORDS, packed)
            seconds += time.perf_counter() - start
            yield rows.table()
        rows = Rows()
        rows.book(READ, {name: read})
        rows.book(SECONDS, {"read": seconds})
        yield rows.table()


def images(table: pa.Table, cfg: build.BuildConfig, out_dir: str, groups: int,
           inline: bool) -> pa.Table:
    """Each image reference's image, read and checked once for the records naming
    it. ``inline``: annotated here too (no model to load), the parts bound for
    the group of their content hash's range; otherwise handed on in batches of
    ``PAIRS_PER_BATCH`` to the transcription actors."""
    start, by_ref = time.perf_counter(), defaultdict(list)
    for packed in items(table, RECORDS):
        by_ref[packed[1]].append(build.Keyed.unpack(packed))
    pairs, rejects = [], []
    for ref in sorted(by_ref):
        records = sorted(by_ref[ref], key=lambda k: (k.record.source, k.record.record))
        image, refused = build.resolve_image(ref, records, cfg, out_dir)
        rejects += refused
        refused_records = {(r.source, r.record) for r in refused}
        if image is not None:
            pairs.append((image, [k for k in records if (k.record.source, k.record.record)
                                  not in refused_records]))
    stage_rejects(out_dir, rejects)
    if inline:
        return annotated(pairs, _points_annotator(cfg), out_dir, groups, start,
                         books(table))
    rows = Rows()
    for i in range(0, len(pairs), PAIRS_PER_BATCH):
        rows.data(i, PAIRS, [(pack_fields(image), [k.pack() for k in records])
                             for image, records in pairs[i:i + PAIRS_PER_BATCH]])
    rows.book(SECONDS, {STAGES[1]: time.perf_counter() - start})
    return rows.table(books(table))


@lru_cache(maxsize=1)
def _points_annotator(cfg: build.BuildConfig) -> build.Annotator:
    return build.Annotator(cfg)


def annotated(pairs: Iterable[tuple[LoadedImage, list[build.Keyed]]],
              annotator: build.Annotator, out_dir: str, groups: int, start: float,
              passed: pa.Table) -> pa.Table:
    """Every record of each (image, records naming it) annotated: image parts bound
    for the group of their content hash's range; rejects staged."""
    by_group: dict[int, list[build.Packed]] = defaultdict(list)
    rejects = []
    for image, records in pairs:
        part, refused = annotator.part(image, records)
        rejects += refused
        by_group[partition_of(image.sha256, groups)].append(part.pack())
    stage_rejects(out_dir, rejects)
    rows = Rows()
    for group, packed in sorted(by_group.items()):
        rows.data(group, PARTS, packed)
    rows.book(SECONDS, {STAGES[1]: time.perf_counter() - start})
    return rows.table(passed)


class Transcribe:
    """A transcription actor: loads the Whisper model once, then annotates batches
    of images with the records naming them (reading their audio here)."""

    def __init__(self, cfg: build.BuildConfig, out_dir: str, groups: int) -> None:
        self.annotator = build.Annotator(cfg)
        self.out_dir, self.groups = out_dir, groups

    def __call__(self, table: pa.Table) -> pa.Table:
        pairs = ((unpack_fields(LoadedImage, image), [build.Keyed.unpack(k) for k in records])
                 for image, records in items(table, PAIRS))
        return annotated(pairs, self.annotator, self.out_dir, self.groups,
                         time.perf_counter(), books(table))


@lru_cache(maxsize=1)
def _caption_writer(cfg: build.BuildConfig, out_dir: str) -> CaptionWriter:
    return build.caption_writer(cfg, out_dir)


def join(table: pa.Table, cfg: build.BuildConfig, previous: build.Previous,
         out_dir: str, writer: CaptionWriter | None = None) -> pa.Table:
    """One planned sample per content hash of a range, in key order, and their
    (key, size); book rows of records accepted per file, failures per reason and
    samples made. The range's captions are written together (``join_samples``)."""
    start, by_hash = time.perf_counter(), defaultdict(list)
    for packed in items(table, PARTS):
        part = build.ImagePart.unpack(packed)
        by_hash[part.image.sha256].append(part)
    groups = [([p.image for p in by_hash[h]], [a for p in by_hash[h] for a in p.annotations])
              for h in sorted(by_hash)]
    outs = build.join_samples(groups, cfg, previous, writer or _caption_writer(cfg, out_dir))
    planned, rejects, accepted, failed = [], [], Counter(), Counter()
    for sample in outs:
        if isinstance(sample, list):
            rejects += sample
            continue
        accepted.update(source["file"] for source in sample.json["sources"])
        failed.update(failure["reason"] for failure in sample.json.get("failures", ()))
        planned.append(build.plan(sample))
    stage_rejects(out_dir, rejects)
    rows = Rows()
    if planned:
        group = pc.max(table[GROUP]).as_py()
        rows.data(group, PLANNED, [p.pack() for p in planned])
        rows.data(group, SIZES, [(p.key, p.size) for p in planned])
    rows.book(ACCEPTED, accepted)
    rows.book(FAILED, failed)
    rows.book(SAMPLES, {"": len(planned)})
    rows.book(SECONDS, {STAGES[1]: time.perf_counter() - start})
    return rows.table(books(table))


class Join:
    """The join as an actor, for captions from a local model (``hf:DIR``): the model is
    loaded once, here, and used for every block the actor joins."""

    def __init__(self, cfg: build.BuildConfig, previous: build.Previous, out_dir: str) -> None:
        self.cfg, self.previous, self.out_dir = cfg, previous, out_dir
        self.writer = build.caption_writer(cfg, out_dir)

    def __call__(self, table: pa.Table) -> pa.Table:
        return join(table, self.cfg, self.previous, self.out_dir, self.writer)


def by_partition(table: pa.Table, parts: int) -> pa.Table:
    """Sizes bound for the group of their key range (``partition_of``)."""
    by_part: dict[int, list[tuple[str, int]]] = defaultdict(list)
    for key, size in items(table, SIZES):
        by_part[partition_of(key, parts)].append((key, size))
    rows = Rows()
    for part, sizes in sorted(by_part.items()):
        rows.data(part, SIZES, sizes)
    return rows.table()


def plan_range(table: pa.Table, cfg: build.BuildConfig) -> pa.Table:
    """Each key range's shard plan from its samples' sizes: each shard's first key."""
    rows = Rows()
    for part, sizes in sorted(groups_of(table).items()):
        rows.data(part, PLAN, list(build.ShardPlan.assign(items(sizes), cfg.shards, 0).first_keys))
    return rows.table()


def groups_of(table: pa.Table) -> dict[int, pa.Table]:
    """A block's rows by group (a block holds whole groups)."""
    return {group: table.filter(pc.equal(table[GROUP], group))
            for group in pc.unique(table[GROUP]).to_pylist()}


def by_shard(table: pa.Table, plan: build.ShardPlan) -> pa.Table:
    """Planned samples bound for the group of their shard."""
    by_shard: dict[int, list[build.Packed]] = defaultdict(list)
    for packed in items(table, PLANNED):
        by_shard[plan.shard_of(packed[0])].append(packed)
    rows = Rows()
    for index, samples in sorted(by_shard.items()):
        rows.data(index, PLANNED, samples)
    return rows.table()


def write(table: pa.Table, cfg: build.BuildConfig, out_dir: str,
          committed: Mapping[int, Any]) -> pa.Table:
    """Each shard in the block written (or kept): its stats, and the seconds it took."""
    rows = Rows()
    for index, samples in sorted(groups_of(table).items()):
        start = time.perf_counter()
        stats = build.write_or_keep(index, map(build.PlannedSample.unpack, items(samples)),
                                    out_dir, cfg, committed.get(index))
        rows.add(index, WRITTEN, count=time.perf_counter() - start,
                 blob=pickle.dumps(stats, protocol=pickle.HIGHEST_PROTOCOL))
    return rows.table()
