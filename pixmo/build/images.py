"""The build's image bytes: read once to check them, staged when downloaded, read again
when their shard is written.

``resolve_image`` (stage 3) loads the image a reference names once for all the
records naming it and hands it on without its bytes, so engines shuffle
descriptions, not pixels; ``attached`` puts the bytes back, one sample at a
time, when a shard is written. Downloads wait in the output's staging folder
in between, by sha256.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace

from pixmo import remote
from pixmo.build.config import BuildConfig
from pixmo.build.parts import Keyed, PlannedSample
from pixmo.dataset.format import ShardSample
from pixmo.errors import PixmoError
from pixmo.images import ImageRejected, LoadedImage, decode_image, read_image_bytes
from pixmo.rejects import Reason, Reject

STAGING = ".staging"  # downloaded image bytes, by sha256, until the shards are written


def read_image(ref: str, cfg: BuildConfig) -> bytes:
    """The bytes a record's ``image`` names: an http(s) URL, or a path inside
    the raw folder, which may itself be remote. Raises ``ImageRejected``."""
    return read_image_bytes(ref, cfg.raw_dir, cfg.image)


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


def attached(samples: Iterable[PlannedSample], cfg: BuildConfig,
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
