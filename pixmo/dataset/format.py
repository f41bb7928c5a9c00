"""The dataset format's names and values: file names, the sample, the shard stats, key rules.

Layout of a dataset directory (see DESIGN.md)::

    dataset.json  manifest.parquet  rejects.parquet
    shards/pixmo-000000.tar  shards/pixmo-000000.json  ...

A sample is a key plus members by extension (``KEY.json``, ``KEY.png``, ...);
JSON members are written in one canonical encoding so equal samples give equal bytes.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from pixmo.errors import PixmoError
from pixmo.schema import validate

SHARDS_DIR = "shards"
DATASET_JSON = "dataset.json"
MANIFEST = "manifest.parquet"
REJECTS = "rejects.parquet"
FORMAT_VERSION = 1
KEY_RE = re.compile(r"^[A-Za-z0-9-][A-Za-z0-9_-]*$")
MAX_KEY_LENGTH = 128
ANNOTATION_KINDS = ("transcripts", "captions", "points", "qa")
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")  # a sample holds one image member


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

    def image(self) -> bytes | None:
        """The bytes of the image member, or None if the sample has none."""
        return next((data for ext, data in self.files.items() if ext in IMAGE_EXTENSIONS), None)


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
    # what ``pixmo inspect`` counts without opening the tar (absent in older markers):
    point_methods: dict[str, int] | None = None  # point label sets by collection method
    failures: dict[str, int] | None = None  # the samples' failures, by reason

    def to_json(self) -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION,
                **{k: v for k, v in self.__dict__.items()
                   if v is not None or k not in ("point_methods", "failures")}}

    @classmethod
    def from_json(cls, obj: dict[str, Any], *, file: str) -> ShardStats:
        validate("shard_stats", obj, file=file)
        return cls(**{k: v for k, v in obj.items() if k != "format_version"})
