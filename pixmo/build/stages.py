"""The build's stage list: raw annotations in, shard samples and rejects out.

Every stage is a plain function of records, so the Beam and Ray pipelines in
``pipelines/`` only wire these, in this order, and produce the same samples:

1. ``read_raw``        raw files -> ``RawRecord`` | ``Reject`` (INVALID_RECORD)
2. ``check_record``    schema of each kind -> ``Keyed`` (image ref, record) | ``Reject``
3. ``resolve_image``   one image ref -> ``LoadedImage`` | rejects for every record naming it
4. ``Annotator``       record + its image -> ``Annotation`` (transcript or points) | ``Reject``
5. ``join_sample``     everything about one content hash -> ``ShardSample`` -> ``plan``
6. ``ShardCutter`` / ``write_or_keep`` / ``finish``   (pixmo.dataset.samples, .writer, .tables)

Input records are counted per file, so ``finish`` can prove that every
record read ended in a sample's ``sources`` or in ``rejects.parquet``. What a
stage could not add to a sample whose records were accepted (a caption the
LLM endpoint never wrote) is in the sample's ``failures`` and counted by reason
in dataset.json's ``failures_by_reason``.

The raw folder and the output folder may be local paths or fsspec URLs
(``pixmo.remote.Folder``); every stage reads and writes through them, so a
stage runs the same on the driver, on a local worker or on a cluster.
Commit order in the output: each shard's tar, then its marker; manifest and
rejects; ``dataset.json`` last, so a folder with a dataset.json is finished.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
import os
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields, replace
from functools import cache
from operator import attrgetter, itemgetter
from pathlib import Path
from typing import Any

from pixmo import remote
from pixmo.atomic import PARTIAL_SUFFIX
from pixmo.captions import CaptionConfig, CaptionFailure, CaptionWriter
from pixmo.config import to_plain
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
from pixmo.dataset.samples import ImageAnnotations, ShardCutter, build_sample, merge_images
from pixmo.dataset.tables import (
    describe,
    manifest_row,
    read_dataset_json,
    read_manifest,
    read_rejects,
    write_dataset_json,
    write_manifest,
    write_rejects,
)
from pixmo.dataset.writer import ShardConfig, tar_digest, write_shard
from pixmo.errors import PixmoError
from pixmo.images import (
    ImageConfig,
    ImageRejected,
    LoadedImage,
    decode_image,
    inside,
    read_image_bytes,
)
from pixmo.points.annotations import ImageInfo, PointAnnotation, PointsConfig, merge_annotations
from pixmo.points.annotations import validate_points as _validate_points
from pixmo.raw import RawRecord, read_records
from pixmo.rejects import Reason, Reject
from pixmo.schema import check
from pixmo.speech.config import SpeechConfig

log = logging.getLogger(__name__)

KINDS = {"captions": "caption_session", "points": "point_annotation"}


@dataclass(frozen=True)
class BuildConfig:
    """Everything a build needs; recorded in dataset.json."""

    raw_dir: str  # a local path or an fsspec URL
    name: str = "pixmo"
    transcribe: bool = True
    speech: SpeechConfig = field(default_factory=SpeechConfig)
    captions: CaptionConfig = field(default_factory=CaptionConfig)
    image: ImageConfig = field(default_factory=ImageConfig)
    points: PointsConfig = field(default_factory=PointsConfig)
    shards: ShardConfig = field(default_factory=ShardConfig)

    def to_json(self) -> dict[str, Any]:
        return to_plain(self)


# Keyed records, image parts and planned samples are what engines move between
# workers. ``pack`` turns each into a tuple of plain values: Beam encodes that
# natively, about twice as fast and half as big as the pickled dataclass.
Packed = tuple[Any, ...]


@cache
def _field_getter(cls: type) -> Callable[[Any], Packed]:
    return attrgetter(*(f.name for f in fields(cls)))


def _values(obj: Any) -> Packed:
    """A flat dataclass's field values, in the order its constructor takes them."""
    return _field_getter(type(obj))(obj)


@dataclass(frozen=True)
class Keyed:
    """A schema-valid raw record with the image it names."""

    kind: str  # caption_session | point_annotation
    image: str
    record: RawRecord

    def pack(self) -> Packed:
        return self.kind, self.image, self.record.source, self.record.record, self.record.data

    @classmethod
    def unpack(cls, packed: Packed) -> Keyed:
        kind, image, source, record, data = packed
        return cls(kind, image, RawRecord(source, record, data))


@dataclass(frozen=True)
class Annotation:
    """What one input record contributes to the sample of its image."""

    image_sha256: str
    kind: str
    source: str
    record: str
    transcript: dict[str, Any] | None = None
    points: PointAnnotation | None = None


@dataclass(frozen=True)
class ImagePart:
    """What one image reference contributes to the sample of its content hash:
    the image (without its bytes) and the annotations of the records naming it."""

    image: LoadedImage
    annotations: tuple[Annotation, ...]

    def pack(self) -> Packed:
        return _values(self.image), tuple(
            (a.image_sha256, a.kind, a.source, a.record, a.transcript,
             None if a.points is None else _values(a.points)) for a in self.annotations)

    @classmethod
    def unpack(cls, packed: Packed) -> ImagePart:
        image, annotations = packed
        return cls(LoadedImage(*image), tuple(
            Annotation(sha, kind, source, record, transcript,
                       None if points is None else PointAnnotation(*points))
            for sha, kind, source, record, transcript, points in annotations))


@dataclass(frozen=True)
class PlannedSample:
    """A sample on its way to a shard: the sample JSON already encoded (as the
    tar will hold it), the image bytes not attached yet."""

    key: str
    json: bytes
    extension: str
    size: int  # bytes in the tar once the image is attached

    def pack(self) -> Packed:
        return _values(self)

    @classmethod
    def unpack(cls, packed: Packed) -> PlannedSample:
        return cls(*packed)


# --------------------------------------------------------------------------- 1-2


def input_files(raw_dir: str | os.PathLike[str]) -> list[str]:
    """Names of ``captions.jsonl``/``.parquet`` and ``points.jsonl``/``.parquet`` that exist."""
    raw = remote.Folder(os.fspath(raw_dir))
    found = [f"{stem}{ext}" for stem in KINDS for ext in (".jsonl", ".parquet")
             if raw.is_file(f"{stem}{ext}")]
    if not found:
        raise PixmoError("no captions.jsonl, points.jsonl or .parquet inputs",
                         file=os.fspath(raw_dir))
    return found


def read_raw(raw_dir: str, name: str) -> Iterator[RawRecord | Reject]:
    """Records of one raw file, named by the file's name within the raw folder."""
    with remote.Folder(raw_dir).local_copy(name) as path:
        yield from read_records(path, "read", source=name)


def kind_of(source: str) -> str:
    return KINDS[source.split(".", 1)[0]]


def check_record(record: RawRecord) -> Keyed | Reject:
    kind = kind_of(record.source)
    if kind == "caption_session":
        violation = check(kind, record.data)
        if violation is not None:
            detail = f"{violation.field}: {violation.message}" if violation.field \
                else violation.message
            return Reject("read", Reason.INVALID_RECORD, detail, record.source, record.record)
    # point annotations are schema-checked by validate_points, which maps fields to reasons
    image = record.data.get("image")
    if not isinstance(image, str) or not image:
        return Reject("read", Reason.INVALID_RECORD, "image: must be a non-empty string",
                      record.source, record.record)
    return Keyed(kind=kind, image=image, record=record)


# --------------------------------------------------------------------------- 3


STAGING = ".staging"  # downloaded image bytes, by sha256, until the shards are written


def read_image(ref: str, cfg: BuildConfig) -> bytes:
    """The bytes a record's ``image`` names: an http(s) URL, or a path inside
    the raw folder, which may itself be remote. Raises ``ImageRejected``."""
    raw = remote.Folder(cfg.raw_dir)
    if not raw.remote or "://" in ref:
        return read_image_bytes(ref, raw.local, cfg.image)
    name = remote.inside(ref)
    if name is None:
        raise ImageRejected(Reason.IMAGE_NOT_FOUND, f"{ref!r} points outside {cfg.raw_dir}")
    try:
        size = raw.size(name)
        if size > cfg.image.max_bytes:
            raise ImageRejected(Reason.IMAGE_TOO_LARGE,
                                f"{size} bytes exceeds the limit of {cfg.image.max_bytes}")
        return raw.read_bytes(name)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
        raise ImageRejected(Reason.IMAGE_NOT_FOUND, f"no file {ref}") from exc


def resolve_image(ref: str, records: Sequence[Keyed], cfg: BuildConfig,
                  out_dir: str | os.PathLike[str]) -> tuple[LoadedImage | None, list[Reject]]:
    """Load and check the image one ref names, once for all records naming it.
    Records whose expected sha256 disagrees are rejected alone; a missing or
    broken image rejects every record that names it.

    The image comes back without its bytes, so engines shuffle descriptions,
    not pixels: ``write_or_keep`` reads them again when its shard is written
    (downloads are kept in the output's staging folder until then)."""
    expected = {k.record.data.get("image_sha256") for k in records} - {None}
    try:
        image = decode_image(read_image(ref, cfg), ref, cfg.image)
    except ImageRejected as exc:
        return None, [Reject("image", exc.reason, exc.detail, k.record.source, k.record.record)
                      for k in records]
    rejects = []
    if expected - {image.sha256}:
        if cfg.image.sha256_policy == "strict":
            rejects = [Reject("image", Reason.IMAGE_SHA256_MISMATCH,
                              f"expected {k.record.data['image_sha256']}, bytes hash to "
                              f"{image.sha256}", k.record.source, k.record.record)
                       for k in records
                       if k.record.data.get("image_sha256") not in (None, image.sha256)]
        else:
            image = replace(image, sha256_flagged=True)
    if remote.is_http(ref):
        remote.Folder(os.fspath(out_dir)).write_bytes(f"{STAGING}/{image.sha256}", image.data)
    return replace(image, data=b""), rejects


def _attached(samples: Iterable[PlannedSample], cfg: BuildConfig,
              out: remote.Folder) -> Iterator[ShardSample]:
    """Samples with their image bytes back, checked against the recorded hash;
    one at a time, so a shard's images are never all in memory."""
    for planned in samples:
        obj = json.loads(planned.json)
        image = obj["image"]
        ref = image["source"]
        data = (out.read_bytes(f"{STAGING}/{image['sha256']}") if remote.is_http(ref)
                else read_image(ref, cfg))
        if hashlib.sha256(data).hexdigest() != image["sha256"]:
            raise PixmoError("image changed while the build ran", file=ref,
                             record=planned.key, field="image.sha256")
        yield ShardSample(key=planned.key, json=obj, files={planned.extension: data})


@dataclass(frozen=True)
class ShardPlan:
    """Which shard each sample goes to. Shards are runs of sorted keys, so the
    first key of each is the whole plan: a few strings however many samples,
    cheap to hand to every worker."""

    first_keys: tuple[str, ...]
    start: int

    @classmethod
    def assign(cls, sizes: Iterable[tuple[str, int]], cfg: ShardConfig, start: int
               ) -> ShardPlan:
        """The plan ``ShardCutter`` makes of (key, tar bytes) pairs, one per sample."""
        cutter = ShardCutter(cfg.max_samples, cfg.max_bytes, start)
        firsts: list[str] = []
        for key, size in sorted(sizes):
            if cutter.shard_of(size) - start == len(firsts):
                firsts.append(key)
        return cls(first_keys=tuple(firsts), start=start)

    @property
    def shards(self) -> int:
        return len(self.first_keys)

    def shard_of(self, key: str) -> int:
        return self.start + bisect.bisect_right(self.first_keys, key) - 1


def _tar_member_bytes(size: int) -> int:
    return 512 + -(-size // 512) * 512  # header block plus data padded to blocks


def plan(sample: ShardSample) -> PlannedSample:
    """The sample's JSON encoded once, with the tar bytes it will take."""
    (extension,) = sample.files
    encoded = json_bytes(sample.json)
    size = _tar_member_bytes(len(encoded)) + _tar_member_bytes(sample.json["image"]["bytes"])
    return PlannedSample(key=sample.key, json=encoded, extension=extension, size=size)


# --------------------------------------------------------------------------- 4


class Annotator:
    """Turns one record and its image into an annotation. Holds the loaded
    Whisper model, so engines build it once per worker."""

    def __init__(self, cfg: BuildConfig) -> None:
        self.cfg = cfg
        self._transcriber = None
        if cfg.transcribe:
            from pixmo.speech.transcribe import Transcriber

            self._transcriber = Transcriber(cfg.speech)

    def __call__(self, keyed: Keyed, image: LoadedImage) -> Annotation | Reject:
        record = keyed.record
        if keyed.kind == "point_annotation":
            info = ImageInfo(image.stored_width, image.stored_height, image.orientation)
            result = _validate_points(record, info, self.cfg.points)
            if isinstance(result, Reject):
                return result
            return Annotation(image.sha256, keyed.kind, record.source, record.record,
                              points=result)
        if self._transcriber is None:
            return Reject("transcribe", Reason.TRANSCRIPTION_FAILED,
                          "transcription is switched off for this build", record.source,
                          record.record)
        data = record.data
        raw = remote.Folder(self.cfg.raw_dir)
        audio = inside(raw.local, data["audio"]) if not raw.remote else remote.inside(
            data["audio"])
        if audio is None:
            return Reject("transcribe", Reason.AUDIO_NOT_FOUND,
                          f"{data['audio']!r} points outside the raw directory", record.source,
                          record.record)
        session = {"annotator": data["annotator"], "session_id": data["session_id"],
                   "language": data.get("language")}
        if raw.remote:
            try:
                with raw.local_copy(audio) as path:
                    _, result = self._transcriber.transcribe_path(path, **session)
            except FileNotFoundError:
                result = Reject("transcribe", Reason.AUDIO_NOT_FOUND, "no such file",
                                record.source, record.record)
        else:
            _, result = self._transcriber.transcribe_path(audio, **session)
        if isinstance(result, Reject):
            return Reject(result.stage, result.reason, result.detail, record.source,
                          record.record)
        return Annotation(image.sha256, keyed.kind, record.source, record.record,
                          transcript=result.to_record())

    def part(self, image: LoadedImage, records: Iterable[Keyed]
             ) -> tuple[ImagePart, list[Reject]]:
        """Annotate every record naming one image."""
        annotations, rejects = [], []
        for keyed in records:
            out = self(keyed, image)
            (rejects if isinstance(out, Reject) else annotations).append(out)
        return ImagePart(image, tuple(annotations)), rejects


# --------------------------------------------------------------------------- 5


def join_image(images: Sequence[LoadedImage], annotations: Sequence[Annotation],
               cfg: BuildConfig) -> ShardSample:
    """The sample of one content hash: merged points, transcripts and their
    caption, or the caption's failure (the transcripts are kept either way)."""
    image = merge_images(images)
    transcripts = [a.transcript for a in annotations if a.transcript is not None]
    captions, failures = [], []
    if transcripts:
        caption = CaptionWriter(cfg.captions)(
            sorted(transcripts, key=lambda t: (t.get("session_id", ""), t["text"])))
        if isinstance(caption, CaptionFailure):
            log.warning("no caption for %s: %s", image.source, caption.detail)
            failures.append(caption.to_record())
        else:
            captions.append(caption.to_record())
    point_sets = merge_annotations([a.points for a in annotations if a.points is not None],
                                   cfg.points)
    return build_sample(ImageAnnotations(
        image=image, transcripts=transcripts, captions=captions,
        points=[p.to_json() for p in point_sets], qa=[],
        sources=[(a.source, a.record) for a in annotations], failures=failures))


def join_sample(images: Sequence[LoadedImage], annotations: Sequence[Annotation],
                cfg: BuildConfig, previous: Previous) -> ShardSample | list[Reject]:
    """The sample of one content hash, or rejects (extend mode: an image the
    dataset holds already); no sample (an empty list) when every record naming
    these bytes was rejected."""
    if not annotations:
        return []
    return exclude_known(join_image(images, annotations, cfg), previous)


# --------------------------------------------------------------------------- 6

MODES = ("resume", "overwrite", "extend")


@dataclass
class Previous:
    """What an output directory already holds when a build starts."""

    # committed shards this build may keep (if current) or must remove
    committed: dict[int, ShardStats] = field(default_factory=dict)
    # extend mode: the finished dataset being added to, which stays as it is
    base: dict[int, ShardStats] = field(default_factory=dict)
    keys: frozenset[str] = frozenset()
    rows: list[dict[str, Any]] = field(default_factory=list)
    rejects: list[dict[str, str]] = field(default_factory=list)
    ledger: list[dict[str, Any]] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=dict)  # by reason, in its samples

    @property
    def start_index(self) -> int:
        """Where new shards are numbered from: after the dataset being extended."""
        return max(self.base) + 1 if self.base else 0


def prepare_output(out_dir: str | os.PathLike[str], mode: str) -> Previous:
    """Make ``out_dir`` (a path or URL) ready for a build.

    ``overwrite`` removes an earlier build. ``resume`` (the default) keeps
    committed shards, which are reused where the new assignment gives them
    the same samples, and removes what an interrupted run left half-done.
    ``extend`` keeps a finished dataset and adds new images as new shards;
    what an interrupted extend committed beyond the shards, manifest rows
    and rejects its dataset.json accounts for is treated as in ``resume``.
    Except in ``extend``, dataset.json goes first: until the build has
    finished again the folder is not a finished dataset.
    """
    if mode not in MODES:
        raise PixmoError(f"mode must be one of {', '.join(MODES)}, got {mode!r}",
                         field="mode")
    out = remote.Folder(os.fspath(out_dir))
    if mode != "extend":
        out.remove(DATASET_JSON)
    if mode == "overwrite":
        for name in [*out.glob(f"{SHARDS_DIR}/*"), MANIFEST, REJECTS]:
            out.remove(name)  # markers (.json) sort before their tars
        out.remove_tree(STAGING)
    out.makedirs(SHARDS_DIR)
    for leftover in out.glob(f"{SHARDS_DIR}/*{PARTIAL_SUFFIX}"):  # killed writers
        out.remove(leftover)
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
    with out.local_copy(MANIFEST) as path:
        rows = [r for r in read_manifest(path) if r["shard"] in names]
    with out.local_copy(REJECTS) as path:  # a later build's rejects follow the dataset's own
        rejects = read_rejects(path)[:description["counts"].get("rejects")]
    return Previous(committed={i: s for i, s in committed.items() if s.shard not in names},
                    base={i: s for i, s in committed.items() if s.shard in names},
                    keys=frozenset(r["key"] for r in rows), rows=rows, rejects=rejects,
                    ledger=description.get("ledger", []),
                    failures=description.get("failures_by_reason", {}))


def exclude_known(sample: ShardSample, previous: Previous) -> ShardSample | list[Reject]:
    """In extend mode an image already in the dataset cannot change: its new
    records are rejected, never silently dropped."""
    if sample.key not in previous.keys:
        return sample
    return [Reject("join", Reason.ALREADY_IN_DATASET,
                   f"image {sample.json['image']['source']} is sample {sample.key} of an "
                   "earlier build", s["file"], s["record"]) for s in sample.json["sources"]]


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
        stats, rows = write_shard(out.local, index, _attached(samples, cfg, out),
                                  cfg.shards.prefix)
    else:
        with tempfile.TemporaryDirectory(prefix="pixmo-shard-") as tmp:
            stats, rows = write_shard(tmp, index, _attached(samples, cfg, out),
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
    if (tar_digest(_attached(samples, cfg, out)) == (old.sha256, old.bytes)
            and out.sha256(tar) == old.sha256):
        log.info("keeping committed %s", old.shard)
        return old
    out.remove(tar.removesuffix(".tar") + ".json")
    return None


def _rows_name(index: int) -> str:
    return f"{STAGING}/rows/{index:06d}.json"


def _manifest_rows(out: remote.Folder, stats: Sequence[ShardStats], previous: Previous
                   ) -> Iterator[dict[str, Any]]:
    """Manifest rows in shard and key order, one shard's rows in memory at a time:
    the dataset being extended keeps its own rows, new shards' rows come from
    the staging folder."""
    base: dict[str, list[dict[str, Any]]] = {}
    for row in previous.rows:
        base.setdefault(row["shard"], []).append(row)
    for shard in sorted(stats, key=attrgetter("shard")):
        rows = (base.get(shard.shard, []) if shard.index in previous.base
                else json.loads(out.read_bytes(_rows_name(shard.index))))
        yield from sorted(rows, key=itemgetter("key"))


def ledger(read: Counter[str], accepted: Counter[str],
           rejects: Sequence[Reject]) -> list[dict[str, Any]]:
    """Per input file: records read, accepted (named by a sample) and rejected."""
    rejected = Counter(r.source for r in rejects)
    return [{"file": f, "read": read[f], "accepted": accepted[f], "rejected": rejected[f]}
            for f in sorted(read)]


def finish(out_dir: str | os.PathLike[str], cfg: BuildConfig, engine: str,
           written: Sequence[ShardStats], rejects: Sequence[Reject], read: Counter[str],
           accepted: Counter[str], failures: Counter[str], previous: Previous,
           stage_seconds: dict[str, float] | None = None) -> dict[str, Any]:
    """Write manifest, rejects and dataset.json (last); check the ledger identity.
    ``failures`` counts, by reason, what this run's samples record in their
    ``failures``: their records are accepted, so they are counted apart."""
    out = remote.Folder(os.fspath(out_dir))
    books = ledger(read, accepted, rejects)
    for entry in books:
        if entry["read"] != entry["accepted"] + entry["rejected"]:
            raise PixmoError(f"ledger does not balance: read {entry['read']}, accepted "
                             f"{entry['accepted']}, rejected {entry['rejected']}",
                             file=entry["file"])
    stats = sorted([*previous.base.values(), *written], key=attrgetter("index"))
    for stale in set(previous.committed) - {s.index for s in stats}:
        # an earlier run's shard beyond this run's assignment: unmark, then remove
        tar = f"{SHARDS_DIR}/{previous.committed[stale].shard}"
        out.remove(tar.removesuffix(".tar") + ".json")
        out.remove(tar)
    reject_rows = [*previous.rejects, *(r.to_row() for r in sorted(
        rejects, key=lambda r: (r.source, int(r.record) if r.record.isdigit() else 0,
                                r.record, r.stage)))]
    with out.local_target(MANIFEST) as path:
        write_manifest(_manifest_rows(out, stats, previous), path)
    with out.local_target(REJECTS) as path:
        write_rejects(reject_rows, path)
    description = describe(cfg.name, stats, engine=engine, build_config=cfg.to_json(),
                           ledger=[*previous.ledger, *books],
                           rejects_by_reason=dict(sorted(Counter(
                               r["reason"] for r in reject_rows).items())))
    description["counts"]["rejects"] = len(reject_rows)
    by_reason = Counter(previous.failures) + failures
    description["counts"]["failures"] = sum(by_reason.values())
    description["failures_by_reason"] = dict(sorted(by_reason.items()))
    if stage_seconds is not None:
        description["stage_seconds"] = {k: round(v, 3) for k, v in sorted(stage_seconds.items())}
    with out.local_target(DATASET_JSON) as path:
        write_dataset_json(description, path)
    out.remove_tree(STAGING)
    return description
