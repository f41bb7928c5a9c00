"""Publishing files whole or not at all.

Everything the toolkit writes goes to a temporary name in the destination
folder and is moved into place with ``os.replace``, so a reader (or a resumed
build) never sees half a file. Temporary names end in ``.partial`` and never
in the final suffix, so globbing ``*.tar`` or ``*.json`` cannot pick them up.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from pixmo.errors import PixmoError

PARTIAL_SUFFIX = ".partial"


def partial_path(path: Path) -> Path:
    return path.with_name(f"{path.name}.{os.getpid()}{PARTIAL_SUFFIX}")


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """Open ``path`` for binary writing; it appears only if the block succeeds."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(final)
    try:
        with open(tmp, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str], *, overwrite: bool = False
                     ) -> Iterator[Path]:
    """Fill a temporary sibling directory; it replaces ``path`` only if the
    block succeeds. A non-empty ``path`` is refused unless ``overwrite``."""
    final = Path(path)
    if final.exists() and any(final.iterdir()) and not overwrite:
        raise PixmoError("output directory exists and is not empty (pass overwrite)",
                         file=str(final))
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=PARTIAL_SUFFIX,
                                dir=final.parent))
    try:
        yield tmp
        if final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old)
        else:
            os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_open(path) as fh:
        fh.write(data)


def remove_partials(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete leftovers of writers that were killed; returns what was removed."""
    removed = []
    for leftover in Path(folder).glob(f"*{PARTIAL_SUFFIX}"):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
        removed.append(leftover)
    return removed
