"""Typed configs to and from plain mappings (YAML, JSON).

A config is a tree of dataclasses; reading one from a mapping refuses
unknown keys with the path of the mapping that had them, builds nested
dataclasses (also inside ``tuple[Config, ...]`` fields) and turns lists into
tuples so configs stay hashable. Writing one back gives plain dicts and lists.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any


def checked_keys(cls: type, data: Any, where: str) -> dict[str, Any]:
    """``data`` as a mapping with only ``cls``'s field names, or a ValueError naming ``where``."""
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a mapping, got {type(data).__name__}")
    unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
    return data


def _dataclass_items(hint: Any) -> type | None:
    """The dataclass of a ``tuple[Config, ...]`` hint, else None."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple and args and dataclasses.is_dataclass(args[0]):
        return args[0]
    return None


def from_mapping(cls: type, data: Any, where: str) -> Any:
    """An instance of dataclass ``cls`` from a mapping; ``where`` names it in errors."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in checked_keys(cls, data, where).items():
        hint, path = hints[name], f"{where}.{name}"
        if dataclasses.is_dataclass(hint) and not isinstance(value, hint):
            value = from_mapping(hint, value, path)
        elif (item := _dataclass_items(hint)) is not None and isinstance(value, (list, tuple)):
            value = tuple(v if isinstance(v, item) else from_mapping(item, v, f"{path}[{i}]")
                          for i, v in enumerate(value))
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ValueError(f"{where}: {exc}") from exc


def to_plain(value: Any) -> Any:
    """Dataclasses, dicts, lists and tuples as plain dicts and lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    return value
