"""Import a released PixMo subset (parquet files) into a dataset directory.

``import_release`` reads the released rows (``pixmo.release.subsets``), downloads each
distinct image URL once with bounded requests (``pixmo.fetch``), checks the
bytes (``pixmo.images``), applies the subset's sha256 policy and writes one
sample per image content hash holding every row that named it, as the official
loader groups rows by image. Every input row ends in a sample's ``sources`` or
in ``rejects.parquet`` with a reason. Samples are made as a build makes them
(``pixmo.dataset.samples.build_sample``: same key scheme, same sorted JSON),
and the ledger and rejects are booked as a build books them (``pixmo.rejects``).

Unlike the official downloader, failures are never cached: the bytes of images
that became samples are kept on disk by URL hash, so a rerun does not fetch them
again, and every other URL is listed with its reason in
``download_failures.jsonl`` and tried again on the next run (``pixmo.release.cache``).

Rows (without image bytes) and sample descriptions stay in memory for the whole
import, so that samples are written in key order whatever order downloads
finish in; image bytes are read back from the cache one sample at a time.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from pixmo.atomic import PARTIAL_SUFFIX
from pixmo.config import at_least, check_fields, one_of
from pixmo.dataset.format import DATASET_JSON, SHARDS_DIR, ShardSample
from pixmo.dataset.samples import ImageAnnotations, build_sample, sample_key
from pixmo.dataset.writer import ShardConfig, write_dataset
from pixmo.errors import PixmoError
from pixmo.fetch import FetchConfig, FetchError, fetch_many
from pixmo.images import ImageConfig, ImageRejected, LoadedImage, decode_image
from pixmo.rejects import Reason, Reject, by_reason, ledger, reject_rows
from pixmo.release.cache import ImageCache, read_failures, write_failures
from pixmo.release.report import ImportReport
from pixmo.release.subsets import Annotations, Row, Sha256Policy, Subset, get_subset, read_rows
from pixmo.remote import file_sha256

log = logging.getLogger(__name__)

CACHE = "image_cache"
DOWNLOAD_STAGE = "import_download"
IMAGE_STAGE = "import_image"


@dataclass(frozen=True)
class ImportConfig:
    """How a released subset is imported."""

    fetch: FetchConfig = field(default_factory=FetchConfig)
    image: ImageConfig = field(default_factory=ImageConfig)  # pixel and byte limits
    shards: ShardConfig = field(default_factory=ShardConfig)
    workers: int = 16  # download threads (each host is still bounded by fetch)
    cache_dir: str | None = None  # downloaded image bytes; default OUT/image_cache
    sha256_policy: str | None = None  # strict, flag or none; None: the subset's own policy

    def __post_init__(self) -> None:
        check_fields(self, workers=at_least(1),
                     sha256_policy=one_of([p.value for p in Sha256Policy]))


def _cache_name(subset: Subset, image: str) -> str:
    return f"sha256:{image}" if subset.embedded else image


@dataclass
class _Sample:
    """One image content hash and the rows merged into it, in input order."""

    image: LoadedImage
    cache_name: str
    entries: list[tuple[tuple[int, int], Row, Annotations]] = field(default_factory=list)
    flagged: bool = False

    def first_row(self) -> Row:
        return min(self.entries, key=lambda e: e[0])[1]

    def to_sample(self, data: bytes, source: str) -> ShardSample:
        """The sample a build would make of these annotations: ``build_sample``."""
        entries = sorted(self.entries, key=lambda e: e[0])  # ties in its sort keep row order
        image = replace(self.image, data=data, source=source, sha256_flagged=self.flagged)
        return build_sample(ImageAnnotations(
            image=image,
            transcripts=[t for _, _, a in entries for t in a.transcripts],
            captions=[c for _, _, a in entries for c in a.captions],
            points=[p for _, _, a in entries for p in a.points],
            qa=[q for _, _, a in entries for q in a.qa],
            sources=[(row.source, row.record) for _, row, _ in entries]))


class _Importer:
    """The state of one import run: ``read``, ``fetch``, then ``write``."""

    def __init__(self, subset: Subset, files: list[str], out: Path, config: ImportConfig) -> None:
        self.subset = subset
        self.files = files
        self.out = out
        self.config = config
        self.policy = Sha256Policy(config.sha256_policy or subset.sha256_policy)
        self.cache = ImageCache(config.cache_dir or out / CACHE)
        self.report = ImportReport(subset.name, os.fspath(out))
        self.rejects: list[Reject] = []
        self.by_image: dict[str, list[tuple[tuple[int, int], Row]]] = {}
        self.read_per_file: Counter[str] = Counter(dict.fromkeys(files, 0))
        self.samples: dict[str, _Sample] = {}
        self.failures: list[dict[str, Any]] = []
        self.failed_before: set[str] = set()

    def read(self) -> None:
        def keep(sha256: str, data: bytes) -> None:
            self.cache.put(_cache_name(self.subset, sha256), data)

        for index, path in enumerate(self.files):
            for item in read_rows(self.subset, path, embedded=keep):
                self.read_per_file[path] += 1
                if isinstance(item, Reject):
                    self.rejects.append(item)
                else:
                    order = (index, int(item.record))
                    self.by_image.setdefault(item.image, []).append((order, item))
        self.report.rows_read = sum(self.read_per_file.values())
        self.report.images = len(self.by_image)

    def fail(self, image: str, stage: str, reason: Reason, detail: str,
             status: int | None = None) -> None:
        """Reject every row of an image and note the failure."""
        rows = self.by_image[image]
        self.rejects.extend(Reject(stage, reason, detail, row.source, row.record)
                            for _, row in rows)
        self.note_failure(image, reason, detail, status, len(rows))

    def note_failure(self, image: str, reason: Reason, detail: str, status: int | None,
                     rows: int) -> None:
        """Count a lost image and, for URLs, list it for the next run. Its cache
        entry goes too: a failure must never be served from the cache."""
        failed = self.report.images_failed
        failed[reason.value] = failed.get(reason.value, 0) + 1
        if not self.subset.embedded:
            self.failures.append({"url": image, "reason": reason.value, "detail": detail,
                                  "status": status, "rows": rows})
            self.cache.drop(image)

    def settle(self, image: str, data: bytes, fresh: bool) -> None:
        """Check one image's bytes and annotate every row that names it."""
        try:
            loaded = decode_image(data, image, self.config.image)
        except ImageRejected as exc:
            self.fail(image, IMAGE_STAGE, exc.reason, exc.detail)
            return
        kept: list[tuple[tuple[int, int], Row, Annotations, bool]] = []
        mismatches = 0
        for order, row in self.by_image[image]:
            flagged = (self.policy is not Sha256Policy.NONE and row.sha256 is not None
                       and row.sha256 != loaded.sha256)
            if flagged and self.policy is Sha256Policy.STRICT:
                mismatches += 1
                self.rejects.append(Reject(IMAGE_STAGE, Reason.IMAGE_SHA256_MISMATCH,
                                           f"expected {row.sha256}, bytes hash to {loaded.sha256}",
                                           row.source, row.record))
                continue
            result = self.subset.annotate(row, loaded)
            if isinstance(result, Reject):
                self.rejects.append(result)
            else:
                kept.append((order, row, result, flagged))
        if not kept:
            if mismatches:  # the host may serve the right bytes again later
                self.note_failure(image, Reason.IMAGE_SHA256_MISMATCH,
                                  f"bytes hash to {loaded.sha256}", None, mismatches)
            else:
                self.report.images_unused += 1
            return
        name = _cache_name(self.subset, image)
        if fresh:
            self.cache.put(name, data)
        self.report.images_ok += 1
        if image in self.failed_before:
            self.report.recovered += 1
        # the bytes stay in the cache; samples keep only their description
        sample = self.samples.setdefault(loaded.sha256, _Sample(replace(loaded, data=b""), name))
        for order, row, added, flagged in kept:
            sample.entries.append((order, row, added))
            sample.flagged |= flagged

    def fetch(self) -> None:
        missing = []
        for image in self.by_image:
            data = self.cache.get(_cache_name(self.subset, image))
            if data is None:
                missing.append(image)
                continue
            if not self.subset.embedded:
                self.report.images_cached += 1
            self.settle(image, data, fresh=False)
        self.report.retried = len(self.failed_before.intersection(missing))
        log.info("%s: %d images cached, %d to download", self.subset.name,
                 len(self.by_image) - len(missing), len(missing))
        for url, result in fetch_many(missing, self.config.fetch, workers=self.config.workers):
            if isinstance(result, FetchError):
                self.fail(url, DOWNLOAD_STAGE, Reason.DOWNLOAD_FAILED, result.reason,
                          result.status)
            else:
                self.report.images_downloaded += 1
                self.settle(url, result, fresh=True)

    def shard_samples(self, samples: list[_Sample]) -> Iterator[ShardSample]:
        """Samples with their bytes read back from the cache one at a time."""
        for sample in samples:
            data = self.cache.get(sample.cache_name)
            if data is None or hashlib.sha256(data).hexdigest() != sample.image.sha256:
                raise PixmoError("cached image bytes vanished or changed during the import",
                                 file=os.fspath(self.cache.path(sample.cache_name)),
                                 record=sample_key(sample.image.sha256))
            yield sample.to_sample(data, self.image_source(sample.first_row()))

    def image_source(self, row: Row) -> str:
        """Where the bytes came from: the URL, or file and image_id (else row number) for
        embedded images (of the earliest row, when several name the same bytes)."""
        if self.subset.embedded:
            return f"{os.path.basename(row.source)}#{row.data.get('image_id', row.record)}"
        return row.image

    def ledger(self, samples: list[_Sample]) -> list[dict[str, Any]]:
        """The build's ledger of these samples and rejects, with each file's sha256."""
        accepted = Counter(row.source for s in samples for _, row, _ in s.entries)
        return [{**entry, "sha256": file_sha256(entry["file"])}
                for entry in ledger(self.read_per_file, accepted,
                                     Counter(r.source for r in self.rejects))]

    def write(self) -> None:
        _remove_previous_dataset(self.out)
        samples = [self.samples[sha256] for sha256 in sorted(self.samples)]  # in key order
        rows = reject_rows(self.rejects)  # downloads finish in any order; the output does not
        build_config = {"subset": self.subset.name, "sha256_policy": self.policy.value,
                        "parquet": self.files, "fetch": asdict(self.config.fetch),
                        "image": {"max_pixels": self.config.image.max_pixels,
                                  "max_bytes": self.config.image.max_bytes}}
        report = self.report
        report.samples = len(samples)
        report.sha256_flagged = sum(s.flagged for s in samples)
        report.rows_rejected = len(rows)
        report.rows_in_samples = sum(len(s.entries) for s in samples)
        report.rows_rejected_by_reason = by_reason(rows)
        report.images_failed = dict(sorted(report.images_failed.items()))
        write_dataset(self.out, self.shard_samples(samples), name=self.subset.name,
                      config=self.config.shards, rejects=rows, engine="import",
                      build_config=build_config, ledger=self.ledger(samples),
                      rejects_by_reason=report.rows_rejected_by_reason,
                      **{"yield": report.yields()})
        write_failures(self.out, self.failures)


def _remove_previous_dataset(out: Path) -> None:
    """An import rewrites the whole dataset: drop the last run's description first,
    then its commit markers, then its tars, so no stale shard stays visible."""
    (out / DATASET_JSON).unlink(missing_ok=True)
    shards = out / SHARDS_DIR
    for pattern in ("*.json", "*.tar", f"*{PARTIAL_SUFFIX}"):
        for path in sorted(shards.glob(pattern)):
            path.unlink()


def import_release(subset: str, parquet_files: Sequence[str | os.PathLike[str]],
                   out_dir: str | os.PathLike[str], *,
                   config: ImportConfig | None = None) -> ImportReport:
    """Import released parquet files of one PixMo subset into ``out_dir`` (shards,
    manifest, rejects, dataset.json, download_failures.jsonl) and report the yield.

    Rerunning on the same ``out_dir`` takes images from the cache and retries
    every URL that failed before.
    """
    spec = get_subset(subset)
    files = [os.fspath(p) for p in parquet_files]
    if not files:
        raise PixmoError("no parquet files given", field="parquet")
    if len(set(files)) != len(files):
        raise PixmoError(f"a parquet file is given twice: {files}", field="parquet")
    out = Path(out_dir)
    importer = _Importer(spec, files, out, config or ImportConfig())
    importer.failed_before = {f["url"] for f in read_failures(out)}
    importer.read()
    importer.fetch()
    importer.write()
    report = importer.report
    log.info("%s", "; ".join(report.lines()))
    return report
