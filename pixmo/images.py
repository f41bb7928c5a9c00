"""Images: read the bytes a record names, check them, and describe them.

The original bytes are what a shard stores, so nothing here re-encodes. A
check opens the header first and refuses images over a pixel limit before
any pixel is decoded (decompression bombs), then decodes fully to prove the
file is whole. The EXIF orientation is read, not applied: shards keep the
stored bytes, and widths, heights and points refer to the displayed image.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from dataclasses import dataclass
from typing import Any

from pixmo.config import at_least, check_fields, one_of
from pixmo.fetch import FetchError
from pixmo.rejects import Reason
from pixmo.remote import Folder, is_http, read_url
from pixmo.remote import inside as remote_inside

FORMATS = {"JPEG": "jpeg", "PNG": "png", "WEBP": "webp"}
EXTENSIONS = {"jpeg": "jpg", "png": "png", "webp": "webp"}
SHA256_POLICIES = ("strict", "flag")  # strict: reject a mismatch; flag: keep and mark it
_EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class ImageConfig:
    max_pixels: int = 64_000_000
    max_bytes: int = 64 << 20
    sha256_policy: str = "strict"  # one of SHA256_POLICIES

    def __post_init__(self) -> None:
        check_fields(self, max_pixels=at_least(1), max_bytes=at_least(1),
                     sha256_policy=one_of(SHA256_POLICIES))


class ImageRejected(Exception):
    """Why an image cannot be used; the calling stage turns it into a Reject."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class LoadedImage:
    data: bytes
    sha256: str
    format: str  # jpeg | png | webp
    stored_width: int
    stored_height: int
    orientation: int  # EXIF orientation tag, 1 = as stored
    source: str
    size: int  # bytes of the original file; ``data`` may be dropped once checked
    sha256_flagged: bool = False

    @property
    def width(self) -> int:
        """Displayed width: orientations 5-8 swap the axes."""
        return self.stored_height if self.orientation >= 5 else self.stored_width

    @property
    def height(self) -> int:
        return self.stored_width if self.orientation >= 5 else self.stored_height

    @property
    def extension(self) -> str:
        return EXTENSIONS[self.format]

    def sample_json(self) -> dict[str, Any]:
        """The ``image`` object of a sample (schema ``sample``)."""
        out: dict[str, Any] = {"sha256": self.sha256, "width": self.width,
                               "height": self.height, "format": self.format,
                               "bytes": self.size, "source": self.source}
        if self.orientation != 1:
            out["exif_orientation"] = self.orientation
        if self.sha256_flagged:
            out["sha256_flagged"] = True
        return out


def decode_image(data: bytes, source: str, config: ImageConfig = ImageConfig(),
                 expected_sha256: str | None = None) -> LoadedImage:
    """Check bytes as an image and describe them; raises ``ImageRejected``."""
    from PIL import Image, UnidentifiedImageError

    if len(data) > config.max_bytes:
        raise ImageRejected(Reason.IMAGE_TOO_LARGE,
                            f"{len(data)} bytes exceeds the limit of {config.max_bytes}")
    digest = hashlib.sha256(data).hexdigest()
    flagged = False
    if expected_sha256 is not None and expected_sha256 != digest:
        if config.sha256_policy == "strict":
            raise ImageRejected(Reason.IMAGE_SHA256_MISMATCH,
                                f"expected {expected_sha256}, bytes hash to {digest}")
        flagged = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                if width * height > config.max_pixels:
                    raise ImageRejected(Reason.IMAGE_TOO_LARGE,
                                        f"{width}x{height} exceeds {config.max_pixels} pixels")
                fmt = FORMATS.get(image.format or "")
                if fmt is None:
                    raise ImageRejected(Reason.IMAGE_UNREADABLE,
                                        f"format {image.format} is not jpeg, png or webp")
                orientation = int(image.getexif().get(_EXIF_ORIENTATION, 1) or 1)
                image.load()
    except ImageRejected:
        raise
    except UnidentifiedImageError as exc:
        raise ImageRejected(Reason.IMAGE_UNREADABLE, "not a decodable image") from exc
    except (OSError, SyntaxError, ValueError,
            Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected(Reason.IMAGE_UNREADABLE, f"{type(exc).__name__}: {exc}") from exc
    if not 1 <= orientation <= 8:
        orientation = 1
    return LoadedImage(data=data, sha256=digest, format=fmt, stored_width=width,
                       stored_height=height, orientation=orientation, source=source,
                       size=len(data),
                       sha256_flagged=flagged)


def read_image_bytes(ref: str, base_dir: str | os.PathLike[str],
                     config: ImageConfig = ImageConfig()) -> bytes:
    """The bytes a record's ``image`` names: an http(s) URL (fetched with bounded
    size, time and retries), or a path inside ``base_dir``, a local folder or an
    fsspec URL."""
    if is_http(ref):
        try:
            return read_url(ref)
        except FetchError as exc:
            raise ImageRejected(Reason.DOWNLOAD_FAILED, str(exc)) from exc
    if "://" in ref:
        raise ImageRejected(Reason.IMAGE_NOT_FOUND, f"unsupported URL scheme in {ref!r}")
    folder = Folder(os.fspath(base_dir))
    name = remote_inside(ref)
    if name in (None, "."):
        where = folder.url if folder.remote else folder.local
        raise ImageRejected(Reason.IMAGE_NOT_FOUND, f"{ref!r} points outside {where}")
    try:
        size = folder.size(name)
        if size > config.max_bytes:
            raise ImageRejected(Reason.IMAGE_TOO_LARGE,
                                f"{size} bytes exceeds the limit of {config.max_bytes}")
        return folder.read_bytes(name)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
        raise ImageRejected(Reason.IMAGE_NOT_FOUND, f"no file {ref}") from exc


def inside(base_dir: str | os.PathLike[str], ref: str) -> str | None:
    """``ref`` joined to ``base_dir``, or None if ``..`` or an absolute path would
    leave it, or it names the folder itself. Lexical (``remote.inside``), so it
    costs no system call per record."""
    name = remote_inside(ref)
    return None if name in (None, ".") else os.path.join(os.path.abspath(base_dir), name)


def load_image(ref: str, base_dir: str | os.PathLike[str], config: ImageConfig = ImageConfig(),
               expected_sha256: str | None = None) -> LoadedImage:
    """Read and check the image a record names; raises ``ImageRejected``."""
    return decode_image(read_image_bytes(ref, base_dir, config), ref, config, expected_sha256)
