"""The dataset's tables: ``manifest.parquet``, ``rejects.parquet`` and ``dataset.json``.

Each is written atomically and every row is checked against its schema under
``schemas/`` (``manifest_row``, ``reject``, ``dataset``); ``describe`` sums the
committed shards' stats into the ``dataset.json`` body.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from pixmo.atomic import atomic_open, atomic_write_bytes
from pixmo.dataset.format import (
    ANNOTATION_KINDS,
    DATASET_JSON,
    FORMAT_VERSION,
    MANIFEST,
    REJECTS,
    ShardSample,
    ShardStats,
)
from pixmo.errors import PixmoError
from pixmo.remote import Folder
from pixmo.schema import load_schema, validate

REJECTS_ROW_GROUP = 1024  # rows per row group of rejects.parquet, as of the manifest


def manifest_row(sample: ShardSample, shard: str) -> dict[str, Any]:
    """The manifest's row for a sample written to ``shard``."""
    image = sample.json.get("image", {})
    row = {
        "key": sample.key,
        "shard": shard,
        "image_sha256": image.get("sha256"),
        "width": image.get("width"),
        "height": image.get("height"),
    }
    row.update({kind: len(sample.json.get(kind, ())) for kind in ANNOTATION_KINDS})
    return row


def _manifest_arrow_schema() -> Any:
    import pyarrow as pa

    types = {"string": pa.string(), "integer": pa.int64()}
    schema = load_schema("manifest_row")
    return pa.schema(
        [
            pa.field(name, types[prop["type"]], nullable=False)
            for name, prop in schema["properties"].items()
        ]
    )


def _write_rows(rows: Iterable[dict[str, Any]], path: str | os.PathLike[str], schema: Any,
                row_schema: str, id_field: str, row_group: int) -> None:
    """Rows checked against ``row_schema`` and written atomically, ``row_group``
    at a time: one group's rows in memory, whatever the table's length."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    with atomic_open(path) as fh, pq.ParquetWriter(fh, schema) as writer:
        group: list[dict[str, Any]] = []
        groups = 0
        for row in rows:
            validate(row_schema, row, file=os.fspath(path), record_id=row.get(id_field))
            group.append(row)
            if len(group) == row_group:
                writer.write_table(pa.Table.from_pylist(group, schema=schema))
                group, groups = [], groups + 1
        if group or not groups:
            writer.write_table(pa.Table.from_pylist(group, schema=schema))


def write_manifest(rows: Iterable[dict[str, Any]], path: str | os.PathLike[str],
                   row_group: int = 1024) -> None:
    """Write ``manifest.parquet`` atomically, each row checked against its schema,
    in row groups of ``row_group``: a manifest of any length in bounded memory."""
    _write_rows(rows, path, _manifest_arrow_schema(), "manifest_row", "key", row_group)


def read_manifest(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def iter_rows(path: str | os.PathLike[str], columns: Sequence[str] | None = None,
              limit: int | None = None) -> Iterator[dict[str, Any]]:
    """The rows of a table (manifest or rejects) in file order, one row group at
    a time and only ``columns`` (all when None), the first ``limit`` (all when
    None): a table of any length is read in the memory of its largest row group.
    (Row group by row group: ``iter_batches`` reads ahead, and its peak grows
    with the file.)"""
    import pyarrow.parquet as pq

    left = limit
    with pq.ParquetFile(path) as table:
        for group in range(table.num_row_groups):
            if left is not None and left <= 0:
                return
            rows = table.read_row_group(group, columns=columns).to_pylist()
            if left is not None:
                rows, left = rows[:left], left - len(rows)
            yield from rows


def write_rejects(rows: Iterable[dict[str, str]], path: str | os.PathLike[str],
                  row_group: int = REJECTS_ROW_GROUP) -> None:
    """Write ``rejects.parquet`` atomically (schema ``reject``), ``row_group``
    rows in memory at a time. Up to ``row_group`` rejects make one row group,
    the bytes ``pyarrow.parquet.write_table`` would write (and earlier builds
    wrote); more make more row groups, where earlier builds wrote one."""
    import pyarrow as pa

    names = list(load_schema("reject")["properties"])
    schema = pa.schema([pa.field(name, pa.string(), nullable=False) for name in names])
    _write_rows(rows, path, schema, "reject", "record", row_group)


def read_rejects(path: str | os.PathLike[str]) -> list[dict[str, str]]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def write_dataset_json(description: dict[str, Any], path: str | os.PathLike[str]) -> None:
    validate("dataset", description, file=os.fspath(path))
    atomic_write_bytes(path, json.dumps(description, indent=2, sort_keys=True).encode() + b"\n")


def read_dataset_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise PixmoError(f"not JSON: {exc}", file=os.fspath(path)) from exc
    validate("dataset", obj, file=os.fspath(path))
    return obj


def write_tables(out_dir: str | os.PathLike[str], manifest: Iterable[dict[str, Any]],
                 rejects: Iterable[dict[str, str]],
                 description: dict[str, Any] | Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Finish a dataset folder (a path or URL) whose shards are committed: the manifest,
    the rejects, then ``dataset.json`` last, so a folder with a dataset.json is whole.
    ``description`` may be a function, called once the tables are written (for
    counts taken as their rows streamed past); returns the body written."""
    out = Folder(os.fspath(out_dir))
    with out.local_target(MANIFEST) as path:
        write_manifest(manifest, path)
    with out.local_target(REJECTS) as path:
        write_rejects(rejects, path)
    body = description() if callable(description) else description
    with out.local_target(DATASET_JSON) as path:
        write_dataset_json(body, path)
    return body


def describe(name: str, stats: list[ShardStats], **extra: Any) -> dict[str, Any]:
    """A ``dataset.json`` body for a set of committed shards."""
    counts = {
        "samples": sum(s.samples for s in stats),
        "shards": len(stats),
        "bytes": sum(s.bytes for s in stats),
    }
    for kind in ANNOTATION_KINDS:
        counts[kind] = sum(s.counts[kind] for s in stats)
    shards = [
        {"shard": s.shard, "samples": s.samples, "bytes": s.bytes, "sha256": s.sha256}
        for s in stats
    ]
    return {"format_version": FORMAT_VERSION, "name": name, "counts": counts, "shards": shards,
            **extra}
