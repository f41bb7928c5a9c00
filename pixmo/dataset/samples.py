"""Joining everything known about one image into one sample: the one builder and key scheme.

Records from different files name images by path or URL; the join key is the
image's content hash, so two names for the same bytes become one sample and
the key is the same whichever engine, machine or input order built it.
Lists are sorted so the sample JSON is too, except ``qa``: a conversation's turns
keep their order, so its caller gives them in a fixed one (an import: row order;
a build writes none). A build and a PixMo import both
make their samples with ``build_sample``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pixmo.dataset.format import ShardSample
from pixmo.images import LoadedImage

KEY_LENGTH = 24  # hex digits of the sha256: 96 bits, collisions are not a concern


def sample_key(image_sha256: str) -> str:
    return image_sha256[:KEY_LENGTH]


@dataclass
class ImageAnnotations:
    """What the stages produced for one image, before it becomes a sample."""

    image: LoadedImage
    transcripts: list[dict[str, Any]] = field(default_factory=list)
    captions: list[dict[str, Any]] = field(default_factory=list)
    points: list[dict[str, Any]] = field(default_factory=list)
    qa: list[dict[str, Any]] = field(default_factory=list)
    sources: list[tuple[str, str]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)  # what a stage could not add


def _sorted(items: Iterable[dict[str, Any]], *fields: str) -> list[dict[str, Any]]:
    return sorted(items, key=lambda item: tuple(str(item.get(f, "")) for f in fields))


def build_sample(parts: ImageAnnotations) -> ShardSample:
    """The shard sample for one image: its original bytes plus the sample JSON."""
    image = parts.image
    key = sample_key(image.sha256)
    sources = sorted(set(parts.sources), key=lambda s: (s[0], _natural(s[1])))
    obj = {
        "schema_version": 1,
        "key": key,
        "image": image.sample_json(),
        "transcripts": _sorted(parts.transcripts, "session_id", "annotator", "text"),
        "captions": _sorted(parts.captions, "method", "text"),
        "points": _sorted(parts.points, "label", "collection_method"),
        "qa": list(parts.qa),  # as given: a conversation's turns stay in order
        "sources": [{"file": f, "record": r} for f, r in sources],
    }
    if parts.failures:  # absent when there are none, so complete samples keep their bytes
        obj["failures"] = _sorted(parts.failures, "stage", "reason", "detail")
    return ShardSample(key=key, json=obj, files={image.extension: image.data})


def _natural(record: str) -> tuple[int, str]:
    return (int(record), "") if record.isdigit() else (1 << 62, record)


def merge_images(images: Sequence[LoadedImage]) -> LoadedImage:
    """Several names for the same bytes: keep one, named by its smallest source."""
    if len({i.sha256 for i in images}) != 1:
        raise ValueError("merge_images needs images with one content hash")
    return min(images, key=lambda i: i.source)
