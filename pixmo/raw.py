"""Reading raw input records: JSONL or parquet, one record per line or row.

Records are numbered from 1 (JSONL line, parquet row) so a reject can name
exactly where it came from; blank JSONL lines are not records. A line that is
not a JSON object is an INVALID_RECORD reject, not an exception, so one bad
line never stops a build. Checking records against their schema is the job
of the stage that uses them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pixmo.errors import PixmoError
from pixmo.rejects import Reason, Reject


@dataclass(frozen=True)
class RawRecord:
    """One raw record as read, with where it came from (file, 1-based line or row)."""

    source: str
    record: str
    data: dict[str, Any]


def _without_nulls(row: dict[str, Any]) -> dict[str, Any]:
    """Parquet has no absent columns, only nulls; an optional field that is null is absent."""
    out = {k: v for k, v in row.items() if v is not None}
    if "points" in row and row["points"] is None:
        out["points"] = None  # a missing points list is an error, not "not present"
    points = out.get("points")
    if (isinstance(points, dict) and set(points) == {"x", "y"}
            and len(points["x"] or []) == len(points["y"] or [])):
        # HF "sequence of struct" columns arrive as {"x": [...], "y": [...]}
        out["points"] = [{"x": x, "y": y}
                         for x, y in zip(points["x"] or [], points["y"] or [], strict=True)]
    return out


def read_records(path: str | Path, stage: str, *,
                 source: str | None = None) -> Iterator[RawRecord | Reject]:
    """Yield every record of a ``.jsonl`` or ``.parquet`` file, in order.

    ``source`` is the name rejects and samples use for the file (default: the path).
    """
    path = Path(path)
    source = source or str(path)
    if not path.is_file():
        raise PixmoError("input file not found", file=str(path))
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        number = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
            for row in batch.to_pylist():
                number += 1
                yield RawRecord(source, str(number), _without_nulls(row))
        return
    if path.suffix != ".jsonl":
        raise PixmoError(f"expected a .jsonl or .parquet file, got {path.suffix!r}",
                         file=str(path))
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as exc:
                yield Reject(stage, Reason.INVALID_RECORD, f"not JSON: {exc.msg}",
                             source, str(number))
                continue
            if not isinstance(data, dict):
                yield Reject(stage, Reason.INVALID_RECORD,
                             f"expected a JSON object, got {type(data).__name__}",
                             source, str(number))
                continue
            yield RawRecord(source, str(number), data)
