"""Validates records against the JSON Schemas in ``schemas/``, the one definition of each format.

(``pixmo validate``, which checks a whole dataset directory, is ``pixmo.dataset.verify``.)

Each schema is loaded and compiled (fastjsonschema) once per process, so
checking a record costs a function call, not a schema walk. A violation comes
back as one line naming the file, the record, the field path and the reason.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import fastjsonschema

from pixmo.errors import PixmoError

SCHEMA_NAMES = (
    "caption_session",
    "point_annotation",
    "sample",
    "shard_stats",
    "dataset",
    "reject",
    "manifest_row",
)


def schema_dir() -> Path:
    """The folder holding the schema files.

    An installed wheel carries them as ``pixmo/schemas/``; a source checkout
    (editable install, tests) has them in the top-level ``schemas/``.
    """
    packaged = Path(__file__).parent / "schemas"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "schemas"


@cache
def load_schema(name: str) -> dict[str, Any]:
    if name not in SCHEMA_NAMES:
        raise ValueError(f"unknown schema {name!r}; expected one of {', '.join(SCHEMA_NAMES)}")
    return json.loads((schema_dir() / f"{name}.json").read_text(encoding="utf-8"))


@cache
def _validator(name: str) -> Callable[[Any], Any]:
    return fastjsonschema.compile(load_schema(name), use_default=False)


@dataclass(frozen=True)
class Violation:
    """The first way a record breaks its schema."""

    schema: str
    field: str  # path such as ``points[2].x``; empty for the record itself
    message: str

    def one_line(self, file: str | None = None, record: str | int | None = None) -> str:
        return PixmoError(
            f"{self.message} (schema {self.schema})",
            file=file,
            record=record,
            field=self.field or None,
        ).one_line()


def _field_path(path: list[str]) -> str:
    out = ""
    for part in path[1:]:  # path[0] is fastjsonschema's "data"
        out += f"[{part}]" if str(part).isdigit() else (f".{part}" if out else str(part))
    return out


def check(name: str, record: Any) -> Violation | None:
    """Return the first violation of schema ``name`` by ``record``, or None."""
    try:
        _validator(name)(record)
    except fastjsonschema.JsonSchemaValueException as exc:
        field = _field_path(list(exc.path))
        message = exc.message.replace(f"{exc.name} ", "", 1) if exc.name else exc.message
        return Violation(schema=name, field=field, message=message)
    return None


def validate(
    name: str, record: Any, *, file: str | None = None, record_id: str | int | None = None
) -> None:
    """Raise ``PixmoError`` (one line: file, record, field, reason) if ``record`` is invalid."""
    violation = check(name, record)
    if violation is not None:
        raise PixmoError(
            f"{violation.message} (schema {name})",
            file=file,
            record=record_id,
            field=violation.field or None,
        )
