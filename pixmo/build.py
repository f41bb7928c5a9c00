"""The build's stage list: raw annotations in, shard samples and rejects out.

Every stage is a plain function of records, so the Beam and Ray pipelines in
``pipelines/`` only wire these, in this order, and produce the same samples:

1. ``read_raw``        raw files -> ``RawRecord`` | ``Reject`` (INVALID_RECORD)
2. ``check_record``    schema of each kind -> ``Keyed`` (image ref, record) | ``Reject``
3. ``resolve_image``   one image ref -> ``LoadedImage`` | rejects for every record naming it
4. ``Annotator``       record + its image -> ``Annotation`` (transcript or points) | ``Reject``
5. ``join_image``      all annotations of one content hash -> ``ShardSample``
6. ``assign_shards`` / ``write_shard`` / ``finish``   (pixmo.samples, pixmo.shards)

Input records are counted per file, so ``finish`` can prove that every
record read ended in a sample's ``sources`` or in ``rejects.parquet``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pixmo.atomic import atomic_write_bytes, remove_partials
from pixmo.captions import CaptionConfig, CaptionWriter
from pixmo.config_io import to_plain
from pixmo.errors import PixmoError
from pixmo.images import (
    ImageConfig,
    ImageRejected,
    LoadedImage,
    inside,
    load_image,
    read_image_bytes,
)
from pixmo.points import ImageInfo, PointAnnotation, PointsConfig, merge_annotations
from pixmo.points import validate_points as _validate_points
from pixmo.records import RawRecord, read_records
from pixmo.rejects import Reason, Reject
from pixmo.samples import ImageAnnotations, build_sample, merge_images
from pixmo.shards import (
    DATASET_JSON,
    MANIFEST,
    REJECTS,
    SHARDS_DIR,
    ShardConfig,
    ShardSample,
    ShardStats,
    committed_shards,
    describe,
    estimated_size,
    file_sha256,
    manifest_row,
    read_dataset_json,
    read_manifest,
    read_rejects,
    tar_digest,
    write_dataset_json,
    write_manifest,
    write_rejects,
    write_shard,
)
from pixmo.speech import SpeechConfig
from pixmo.validation import check

log = logging.getLogger(__name__)

KINDS = {"captions": "caption_session", "points": "point_annotation"}


@dataclass(frozen=True)
class BuildConfig:
    """Everything a build needs; recorded in dataset.json."""

    raw_dir: str
    name: str = "pixmo"
    transcribe: bool = True
    speech: SpeechConfig = field(default_factory=SpeechConfig)
    captions: CaptionConfig = field(default_factory=CaptionConfig)
    image: ImageConfig = field(default_factory=ImageConfig)
    points: PointsConfig = field(default_factory=PointsConfig)
    shards: ShardConfig = field(default_factory=ShardConfig)

    def to_json(self) -> dict[str, Any]:
        return to_plain(self)


@dataclass(frozen=True)
class Keyed:
    """A schema-valid raw record with the image it names."""

    kind: str  # caption_session | point_annotation
    image: str
    record: RawRecord


@dataclass(frozen=True)
class Annotation:
    """What one input record contributes to the sample of its image."""

    image_sha256: str
    kind: str
    source: str
    record: str
    transcript: dict[str, Any] | None = None
    points: PointAnnotation | None = None


# --------------------------------------------------------------------------- 1-2


def input_files(raw_dir: str | os.PathLike[str]) -> list[Path]:
    """``captions.jsonl``/``.parquet`` and ``points.jsonl``/``.parquet`` that exist."""
    root = Path(raw_dir)
    found = [root / f"{stem}{ext}" for stem in KINDS for ext in (".jsonl", ".parquet")
             if (root / f"{stem}{ext}").is_file()]
    if not found:
        raise PixmoError("no captions.jsonl, points.jsonl or .parquet inputs", file=str(root))
    return found


def read_raw(path: Path) -> Iterator[RawRecord | Reject]:
    """Records of one raw file, named by the file's name within the raw directory."""
    return read_records(path, "read", source=path.name)


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


def resolve_image(ref: str, records: Sequence[Keyed], cfg: BuildConfig,
                  out_dir: str | os.PathLike[str]) -> tuple[LoadedImage | None, list[Reject]]:
    """Load and check the image one ref names, once for all records naming it.
    Records whose expected sha256 disagrees are rejected alone; a missing or
    broken image rejects every record that names it.

    The image comes back without its bytes, so engines shuffle descriptions,
    not pixels: ``attach_images`` reads them again when its shard is written
    (downloads are kept in the output's staging folder until then)."""
    expected = {k.record.data.get("image_sha256") for k in records} - {None}
    try:
        image = load_image(ref, cfg.raw_dir, cfg.image)
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
    if _is_url(ref):
        atomic_write_bytes(Path(out_dir) / STAGING / image.sha256, image.data)
    return replace(image, data=b""), rejects


def _is_url(ref: str) -> bool:
    return ref.startswith(("http://", "https://"))


def attach_images(samples: Iterable[ShardSample], cfg: BuildConfig,
                  out_dir: str | os.PathLike[str]) -> list[ShardSample]:
    """Give samples their image bytes back, checked against the recorded hash."""
    out = []
    for sample in samples:
        image = sample.json["image"]
        ref = image["source"]
        data = (Path(out_dir, STAGING, image["sha256"]).read_bytes() if _is_url(ref)
                else read_image_bytes(ref, cfg.raw_dir, cfg.image))
        if hashlib.sha256(data).hexdigest() != image["sha256"]:
            raise PixmoError("image changed while the build ran", file=ref,
                             record=sample.key, field="image.sha256")
        ext = next(iter(sample.files))
        out.append(replace(sample, files={ext: data}))
    return out


def planned_size(sample: ShardSample) -> int:
    """Tar bytes of a sample whose image bytes are not attached yet."""
    return estimated_size(sample) + -(-sample.json["image"]["bytes"] // 512) * 512


# --------------------------------------------------------------------------- 4


class Annotator:
    """Turns one record and its image into an annotation. Holds the loaded
    Whisper model, so engines build it once per worker."""

    def __init__(self, cfg: BuildConfig) -> None:
        self.cfg = cfg
        self._transcriber = None
        if cfg.transcribe:
            from pixmo.speech import Transcriber

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
        audio_path = inside(self.cfg.raw_dir, data["audio"])
        if audio_path is None:
            return Reject("transcribe", Reason.AUDIO_NOT_FOUND,
                          f"{data['audio']!r} points outside the raw directory", record.source,
                          record.record)
        _, result = self._transcriber.transcribe_path(
            audio_path, annotator=data["annotator"], session_id=data["session_id"],
            language=data.get("language"))
        if isinstance(result, Reject):
            return Reject(result.stage, result.reason, result.detail, record.source,
                          record.record)
        return Annotation(image.sha256, keyed.kind, record.source, record.record,
                          transcript=result.to_record())


# --------------------------------------------------------------------------- 5


def join_image(images: Sequence[LoadedImage], annotations: Sequence[Annotation],
               cfg: BuildConfig) -> ShardSample:
    """The sample of one content hash: merged points, transcripts and their caption."""
    image = merge_images(images)
    transcripts = [a.transcript for a in annotations if a.transcript is not None]
    captions = []
    if transcripts:
        caption = CaptionWriter(cfg.captions)(
            sorted(transcripts, key=lambda t: (t.get("session_id", ""), t["text"])),
            source=image.source, record=image.sha256)
        if isinstance(caption, Reject):
            log.warning("no caption for %s: %s", image.source, caption.detail)
        else:
            captions.append(caption.to_record())
    point_sets = merge_annotations([a.points for a in annotations if a.points is not None],
                                   cfg.points)
    return build_sample(ImageAnnotations(
        image=image, transcripts=transcripts, captions=captions,
        points=[p.to_json() for p in point_sets], qa=[],
        sources=[(a.source, a.record) for a in annotations]))


# --------------------------------------------------------------------------- 6

MODES = ("resume", "overwrite", "extend")


@dataclass
class Previous:
    """What an output directory already holds when a build starts."""

    committed: dict[int, ShardStats] = field(default_factory=dict)
    # extend mode: the finished dataset being added to
    extending: bool = False
    keys: frozenset[str] = frozenset()
    rows: list[dict[str, Any]] = field(default_factory=list)
    rejects: list[dict[str, str]] = field(default_factory=list)
    ledger: list[dict[str, Any]] = field(default_factory=list)

    @property
    def start_index(self) -> int:
        """Where new shards are numbered from: after the dataset being extended."""
        return max(self.committed) + 1 if self.extending and self.committed else 0


def prepare_output(out_dir: str | os.PathLike[str], mode: str) -> Previous:
    """Make ``out_dir`` ready for a build.

    ``overwrite`` removes an earlier build. ``resume`` (the default) keeps
    committed shards, which are reused where the new assignment gives them
    the same samples, and removes what an interrupted run left half-done.
    ``extend`` keeps a finished dataset and adds new images as new shards.
    """
    if mode not in MODES:
        raise PixmoError(f"mode must be one of {', '.join(MODES)}, got {mode!r}",
                         field="mode")
    out = Path(out_dir)
    shards = out / SHARDS_DIR
    if mode == "overwrite":
        for path in [*shards.glob("*"), out / MANIFEST, out / REJECTS, out / DATASET_JSON]:
            path.unlink(missing_ok=True)
        shutil.rmtree(out / STAGING, ignore_errors=True)
    shards.mkdir(parents=True, exist_ok=True)
    remove_partials(shards)
    committed = {s.index: s for s in committed_shards(out)}
    for tar in shards.glob("*.tar"):
        if tar.name not in {s.shard for s in committed.values()}:
            tar.unlink()  # renamed but never marked: not trusted
    if mode != "extend":
        return Previous(committed=committed)
    if not (out / DATASET_JSON).is_file():
        raise PixmoError("extend needs a finished dataset (no dataset.json)", file=str(out))
    description = read_dataset_json(out / DATASET_JSON)
    rows = read_manifest(out / MANIFEST)
    return Previous(committed=committed, extending=True, keys=frozenset(r["key"] for r in rows),
                    rows=rows,
                    rejects=read_rejects(out / REJECTS), ledger=description.get("ledger", []))


def exclude_known(sample: ShardSample, previous: Previous) -> ShardSample | list[Reject]:
    """In extend mode an image already in the dataset cannot change: its new
    records are rejected, never silently dropped."""
    if sample.key not in previous.keys:
        return sample
    return [Reject("join", Reason.ALREADY_IN_DATASET,
                   f"image {sample.json['image']['source']} is sample {sample.key} of an "
                   "earlier build", s["file"], s["record"]) for s in sample.json["sources"]]


def write_or_keep(index: int, samples: Iterable[ShardSample], out_dir: str | os.PathLike[str],
                  cfg: BuildConfig, previous: Previous
                  ) -> tuple[ShardStats, list[dict[str, Any]]]:
    """Write shard ``index``, unless a committed shard holding exactly these
    samples is already there: committed shards are never rewritten. "Exactly"
    is proven by hash: the tar these samples would make, the marker and the
    file on disk must all agree."""
    samples = attach_images(sorted(samples, key=lambda s: s.key), cfg, out_dir)
    old = previous.committed.get(index)
    if old is not None and tar_digest(samples) == (old.sha256, old.bytes):
        tar = Path(out_dir) / SHARDS_DIR / old.shard
        if file_sha256(tar) == old.sha256:
            log.info("keeping committed %s", old.shard)
            return old, [manifest_row(s, old.shard) for s in samples]
    return write_shard(out_dir, index, samples, cfg.shards.prefix)


def ledger(read: Counter[str], accepted: Counter[str],
           rejects: Sequence[Reject]) -> list[dict[str, Any]]:
    """Per input file: records read, accepted (named by a sample) and rejected."""
    rejected = Counter(r.source for r in rejects)
    return [{"file": f, "read": read[f], "accepted": accepted[f], "rejected": rejected[f]}
            for f in sorted(read)]


def finish(out_dir: str | os.PathLike[str], cfg: BuildConfig, engine: str,
           written: Sequence[tuple[ShardStats, list[dict[str, Any]]]],
           rejects: Sequence[Reject], read: Counter[str], accepted: Counter[str],
           previous: Previous) -> dict[str, Any]:
    """Write manifest, rejects and dataset.json (last); check the ledger identity."""
    out = Path(out_dir)
    books = ledger(read, accepted, rejects)
    for entry in books:
        if entry["read"] != entry["accepted"] + entry["rejected"]:
            raise PixmoError(f"ledger does not balance: read {entry['read']}, accepted "
                             f"{entry['accepted']}, rejected {entry['rejected']}",
                             file=entry["file"])
    kept = list(previous.committed.values()) if previous.extending else []
    stats = sorted([*kept, *(s for s, _ in written)], key=lambda s: s.index)
    for stale in set(previous.committed) - {s.index for s in stats}:
        # an earlier run's shard beyond this run's assignment: unmark, then remove
        tar = out / SHARDS_DIR / previous.committed[stale].shard
        tar.with_suffix(".json").unlink()
        tar.unlink(missing_ok=True)
    rows = sorted([*previous.rows, *(r for _, rs in written for r in rs)],
                  key=lambda r: (r["shard"], r["key"]))
    reject_rows = [*previous.rejects, *(r.to_row() for r in sorted(
        rejects, key=lambda r: (r.source, int(r.record) if r.record.isdigit() else 0,
                                r.record, r.stage)))]
    write_manifest(rows, out / MANIFEST)
    write_rejects(reject_rows, out / REJECTS)
    description = describe(cfg.name, stats, engine=engine, build_config=cfg.to_json(),
                           ledger=[*previous.ledger, *books],
                           rejects_by_reason=dict(sorted(Counter(
                               r["reason"] for r in reject_rows).items())))
    description["counts"]["rejects"] = len(reject_rows)
    write_dataset_json(description, out / DATASET_JSON)
    shutil.rmtree(out / STAGING, ignore_errors=True)
    return description


def record_stage_seconds(out_dir: str | os.PathLike[str], seconds: dict[str, float]) -> None:
    """Add the time each stage took (known to the engine only after the run) to dataset.json."""
    path = Path(out_dir) / DATASET_JSON
    description = read_dataset_json(path)
    description["stage_seconds"] = {k: round(v, 3) for k, v in sorted(seconds.items())}
    write_dataset_json(description, path)
