"""The build's stage list: raw annotations in, planned shard samples and rejects out.

Every stage is a plain function of records, so the Beam and Ray pipelines in
``pipelines/`` only wire these, in this order, and produce the same samples:

1. ``read_raw``        raw files -> ``RawRecord`` | ``Reject`` (INVALID_RECORD)
2. ``check_record``    schema of each kind -> ``Keyed`` (image ref, record) | ``Reject``
3. ``resolve_image``   one image ref -> ``LoadedImage`` | rejects for every record naming it
                       (``pixmo.build.images``)
4. ``Annotator``       record + its image -> ``Annotation`` (transcript or points) | ``Reject``
5. ``join_samples``    everything about each content hash -> ``ShardSample`` -> ``plan``
                       (captions written for many hashes at once: ``caption_writer``)
6. ``ShardPlan`` / ``ShardCutter`` (``pixmo.dataset.cutting``), then ``write_or_keep``
   and ``finish`` (``pixmo.build.output``)

Input records are counted per file, so ``finish`` can prove that every
record read ended in a sample's ``sources`` or in ``rejects.parquet``. What a
stage could not add to a sample whose records were accepted (a caption the
LLM endpoint never wrote) is in the sample's ``failures`` and counted by reason
in dataset.json's ``failures_by_reason``.

The raw folder and the output folder may be local paths or fsspec URLs
(``pixmo.remote.Folder``); every stage reads and writes through them, so a
stage runs the same on the driver, on a local worker or on a cluster.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Sequence

from pixmo import remote
from pixmo.build.config import BuildConfig
from pixmo.build.output import Previous, exclude_known
from pixmo.build.parts import Annotation, ImagePart, Keyed, PlannedSample
from pixmo.captions import Caption, CaptionFailure, CaptionWriter
from pixmo.dataset.cutting import tar_bytes
from pixmo.dataset.format import ShardSample, json_bytes
from pixmo.dataset.samples import ImageAnnotations, build_sample, merge_images
from pixmo.errors import PixmoError
from pixmo.images import LoadedImage, inside
from pixmo.points.annotations import ImageInfo, merge_annotations
from pixmo.points.annotations import validate_points as _validate_points
from pixmo.raw import RawRecord, read_records
from pixmo.rejects import Reason, Reject
from pixmo.schema import check

log = logging.getLogger(__name__)

KINDS = {"captions": "caption_session", "points": "point_annotation"}
CAPTION_CACHE = "caption_cache"  # in the output folder: the LLM's replies by request


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


def caption_writer(cfg: BuildConfig, out_dir: str | None = None) -> CaptionWriter:
    """The build's caption writer (an LLM's replies cached in ``out_dir/caption_cache``
    unless the config names a cache). Holds a local model once loaded, so engines build
    it once per worker."""
    cache = f"{out_dir.rstrip('/')}/{CAPTION_CACHE}" if out_dir is not None else None
    return CaptionWriter(cfg.captions, cache_dir=cache)


def join_image(images: Sequence[LoadedImage], annotations: Sequence[Annotation],
               cfg: BuildConfig, writer: CaptionWriter | None = None) -> ShardSample:
    """The sample of one content hash (``join_images`` of one)."""
    return join_images([(images, annotations)], cfg, writer or caption_writer(cfg))[0]


def join_images(groups: Sequence[tuple[Sequence[LoadedImage], Sequence[Annotation]]],
                cfg: BuildConfig, writer: CaptionWriter) -> list[ShardSample]:
    """The sample of each content hash: merged points, transcripts and their caption, or
    the caption's failure (the transcripts are kept either way). The captions of all
    ``groups`` are written together (``CaptionWriter.many``)."""
    transcripts = [sorted((a.transcript for a in annotations if a.transcript is not None),
                          key=lambda t: (t.get("session_id", ""), t["text"]))
                   for _, annotations in groups]
    asked = [i for i, t in enumerate(transcripts) if t]
    captions = dict(zip(asked, writer.many([transcripts[i] for i in asked]), strict=True))
    samples = []
    for i, (images, parts) in enumerate(groups):
        image = merge_images(images)
        caption, failures = captions.get(i), []
        if isinstance(caption, CaptionFailure):
            log.warning("no caption for %s: %s", image.source, caption.detail)
            failures.append(caption.to_record())
        point_sets = merge_annotations([a.points for a in parts if a.points is not None],
                                       cfg.points)
        samples.append(build_sample(ImageAnnotations(
            image=image, transcripts=transcripts[i],
            captions=[caption.to_record()] if isinstance(caption, Caption) else [],
            points=[p.to_json() for p in point_sets], qa=[],
            sources=[(a.source, a.record) for a in parts], failures=failures)))
    return samples


def join_samples(groups: Sequence[tuple[Sequence[LoadedImage], Sequence[Annotation]]],
                 cfg: BuildConfig, previous: Previous, writer: CaptionWriter
                 ) -> list[ShardSample | list[Reject]]:
    """For each content hash, its sample, or rejects (extend mode: an image the dataset
    holds already); no sample (an empty list) when every record naming these bytes was
    rejected."""
    joined = iter(join_images([g for g in groups if g[1]], cfg, writer))
    return [exclude_known(next(joined), previous) if parts else [] for _, parts in groups]


def join_sample(images: Sequence[LoadedImage], annotations: Sequence[Annotation],
                cfg: BuildConfig, previous: Previous, writer: CaptionWriter | None = None
                ) -> ShardSample | list[Reject]:
    """``join_samples`` of one content hash."""
    return join_samples([(images, annotations)], cfg, previous,
                        writer or caption_writer(cfg))[0]


def plan(sample: ShardSample) -> PlannedSample:
    """The sample's JSON encoded once, with the tar bytes it will take."""
    (extension,) = sample.files
    encoded = json_bytes(sample.json)
    size = tar_bytes((len(encoded), sample.json["image"]["bytes"]))
    return PlannedSample(key=sample.key, json=encoded, extension=extension, size=size)
