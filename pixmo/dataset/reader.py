"""Reading shards: committed shards of a dataset, shard URLs, and their samples.

A shard exists for readers only once its stats JSON (the commit marker) is
there. Sources are local paths, ``file://`` and fsspec URLs, brace patterns or
lists of them. The reader never decodes anything but JSON: no pickle, no
``torch.load``; other members are handed back as bytes.
"""

from __future__ import annotations

import json
import os
import re
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from pixmo.dataset.format import SHARDS_DIR, ShardSample, ShardStats
from pixmo.errors import PixmoError
from pixmo.remote import is_remote, open_url


def committed_shards(dataset_dir: str | os.PathLike[str]) -> list[ShardStats]:
    """Stats of every committed shard of a dataset directory, in index order."""
    source = os.fspath(dataset_dir)
    if is_remote(source):
        import fsspec

        fs, root = fsspec.core.url_to_fs(source)
        markers = sorted(fs.glob(f"{root.rstrip('/')}/{SHARDS_DIR}/*-[0-9]*.json"))
        read = fs.cat_file
    else:
        root = source.removeprefix("file://")
        markers = sorted(str(p) for p in Path(root, SHARDS_DIR).glob("*-[0-9]*.json"))

        def read(path: str) -> bytes:
            return Path(path).read_bytes()

    stats = []
    for marker in markers:
        try:
            obj = json.loads(read(marker))
        except json.JSONDecodeError as exc:
            raise PixmoError(f"stats file is not JSON: {exc}", file=marker) from exc
        stats.append(ShardStats.from_json(obj, file=marker))
    return sorted(stats, key=lambda s: s.index)


def expand_braces(pattern: str) -> list[str]:
    """Expand ``{000000..000012}`` numeric ranges and ``{a,b}`` lists in shard URLs."""
    match = re.search(r"\{([^{}]*)\}", pattern)
    if match is None:
        return [pattern]
    head, tail = pattern[: match.start()], pattern[match.end():]
    body = match.group(1)
    numeric = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if numeric:
        lo, hi = numeric.groups()
        width = len(lo) if lo.startswith("0") else 0
        choices = [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
    else:
        choices = body.split(",")
    return [out for choice in choices for out in expand_braces(head + choice + tail)]


def shard_urls(source: str | os.PathLike[str] | Iterable[str]) -> list[str]:
    """Shard URLs from a dataset directory (committed shards only), a brace
    pattern, or an explicit list of local paths and fsspec URLs."""
    if not isinstance(source, (str, os.PathLike)):
        return [url for item in source for url in shard_urls(item)]
    text = os.fspath(source)
    if text.endswith(".tar") or "{" in text:
        return expand_braces(text)
    base = text.rstrip("/")
    return [f"{base}/{SHARDS_DIR}/{stats.shard}" for stats in committed_shards(text)]


def _split_member(name: str) -> tuple[str, str]:
    base = name.rsplit("/", 1)[-1]
    if "." not in base:
        return name, ""
    key, ext = base.split(".", 1)
    return name[: len(name) - len(base)] + key, ext


def parse_sample(url: str, key: str, members: dict[str, bytes]) -> ShardSample:
    """A sample from its raw members: the JSON parsed, everything else bytes."""
    members = dict(members)
    raw = members.pop("json", None)
    if raw is None:
        raise PixmoError("sample has no .json member", file=url, record=key)
    try:
        obj = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PixmoError(f"sample JSON does not parse: {exc}", file=url, record=key,
                         field="json") from exc
    return ShardSample(key=key, json=obj, files=members)


def iter_members(url: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) for each sample of one tar, in stored order.

    A broken tar ends the iteration with a ``PixmoError``; a broken sample does
    not, since nothing here decodes members (``parse_sample`` does)."""
    key: str | None = None
    members: dict[str, bytes] = {}
    seen: set[str] = set()
    with open_url(url) as fh:
        try:
            with tarfile.open(fileobj=fh, mode="r|") as tar:
                for info in tar:
                    if not info.isfile():
                        continue
                    member_key, ext = _split_member(info.name)
                    if not ext or member_key.startswith("__"):
                        continue
                    if member_key != key:
                        if key is not None:
                            yield key, members
                        if member_key in seen:
                            raise PixmoError("members of this sample are not adjacent",
                                             file=url, record=member_key)
                        seen.add(member_key)
                        key, members = member_key, {}
                    if ext in members:
                        raise PixmoError(f"duplicate member .{ext}", file=url, record=key)
                    data = tar.extractfile(info)
                    members[ext] = data.read() if data is not None else b""
        except tarfile.TarError as exc:
            raise PixmoError(f"corrupt tar: {exc}", file=url, record=key) from exc
        if key is not None:
            yield key, members


def iter_shard(url: str) -> Iterator[ShardSample]:
    """Samples of one tar in stored order; members grouped by key."""
    for key, members in iter_members(url):
        yield parse_sample(url, key, members)


def iter_samples(source: str | os.PathLike[str] | Iterable[str]) -> Iterator[ShardSample]:
    """Every sample of a dataset directory, brace pattern or list of shard URLs."""
    for url in shard_urls(source):
        yield from iter_shard(url)

