"""Typed configs to and from plain mappings (YAML, JSON).

A config is a tree of dataclasses; reading one from a mapping refuses
unknown keys with the path of the mapping that had them, checks every value
against its field's type, builds nested dataclasses (also inside
``tuple[Config, ...]`` fields) and turns lists into tuples so configs stay
hashable. A value a config refuses is reported under its path in the mapping
(``config.data.batch_size``), not under the class that checked it. Writing one
back gives plain dicts and lists.

A config checks its own values in ``__post_init__`` with ``check_fields`` and the rules
``at_least``, ``above``, ``at_most``, ``between``, ``finite``, ``one_of`` and
``subset_of``: one line per field, one
wording of every range error, ``Class.field`` in each.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import types
import typing
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from pixmo.errors import ConfigError, PixmoError


def checked_keys(cls: type, data: Any, where: str) -> dict[str, Any]:
    """``data`` as a mapping with only ``cls``'s field names, or an error naming ``where``."""
    if not isinstance(data, dict):
        raise ConfigError(f"must be a mapping, got {data!r}", field=where)
    unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise PixmoError(f"unknown keys {sorted(unknown)}", field=where)
    return data


def _dataclass_items(hint: Any) -> type | None:
    """The dataclass of a ``tuple[Config, ...]`` hint, else None."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple and args and dataclasses.is_dataclass(args[0]):
        return args[0]
    return None


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def _section(hint: Any) -> type | None:
    """The dataclass of a ``Config`` or an optional ``Config | None`` hint, else None."""
    if dataclasses.is_dataclass(hint):
        return hint
    found = [a for a in typing.get_args(hint) if dataclasses.is_dataclass(a)] \
        if _is_union(hint) else []
    return found[0] if len(found) == 1 else None


def _fits(value: Any, hint: Any) -> bool:
    """Whether ``value`` (lists already tuples) is of type ``hint``; an int is a float, a
    bool is not a number."""
    args = typing.get_args(hint)
    if hint is Any:
        return True
    if _is_union(hint):
        return any(_fits(value, a) for a in args)
    if typing.get_origin(hint) is tuple:
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_fits(v, args[0]) for v in value)
        return len(value) == len(args) and all(map(_fits, value, args))
    if typing.get_origin(hint) is dict:
        return isinstance(value, dict)
    if hint in (int, float) and isinstance(value, bool):
        return False
    if hint is float:
        return isinstance(value, (int, float))
    return isinstance(value, hint)


def _type_name(hint: Any) -> str:
    """``hint`` as a YAML writer thinks of it: ``float or null``, ``[int, int]``."""
    args = typing.get_args(hint)
    if _is_union(hint):
        return " or ".join(_type_name(a) for a in args)
    if typing.get_origin(hint) is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            items = "mappings" if dataclasses.is_dataclass(args[0]) else _type_name(args[0])
            return f"a list of {items}"
        return f"[{', '.join(_type_name(a) for a in args)}]"
    if typing.get_origin(hint) is dict or dataclasses.is_dataclass(hint):
        return "a mapping"
    if hint is type(None):
        return "null"
    return getattr(hint, "__name__", str(hint))


def _required(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]


def from_mapping(cls: type, data: Any, where: str) -> Any:
    """An instance of dataclass ``cls`` from a mapping; ``where`` names it in errors."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in checked_keys(cls, data, where).items():
        hint, path = hints[name], f"{where}.{name}"
        if (section := _section(hint)) is not None and isinstance(value, dict):
            value = from_mapping(section, value, path)
        elif (item := _dataclass_items(hint)) is not None and isinstance(value, (list, tuple)):
            value = tuple(v if isinstance(v, item) else from_mapping(item, v, f"{path}[{i}]")
                          for i, v in enumerate(value))
        elif isinstance(value, list):
            value = tuple(value)
        if not _fits(value, hint):
            raise ConfigError(f"must be {_type_name(hint)}, got {data[name]!r}", field=path)
        kwargs[name] = value
    for name in _required(cls):
        if name not in kwargs:
            raise ConfigError("is required", field=f"{where}.{name}")
    try:
        return cls(**kwargs)
    except ConfigError as exc:  # checked by ``cls`` itself: name the key, not the class
        owner, _, name = (exc.field or "").partition(".")
        if owner != cls.__name__:
            raise
        raise exc.located(field=f"{where}.{name}" if name else where) from exc


def to_plain(value: Any) -> Any:
    """Dataclasses, dicts, lists and tuples as plain dicts and lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    return value


@dataclasses.dataclass(frozen=True)
class Rule:
    """What a field's value must satisfy; ``None`` always passes (an unset optional)."""

    test: Any  # (value) -> bool; NaN fails every numeric rule
    wording: str  # completes "must be ..."

    def holds(self, value: Any) -> bool:
        return value is None or bool(self.test(value))


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not math.isnan(value)


def at_least(low: float) -> Rule:
    return Rule(lambda v: _number(v) and v >= low, f">= {low}")


def above(low: float) -> Rule:
    return Rule(lambda v: _number(v) and v > low, f"> {low}")


def at_most(high: float) -> Rule:
    return Rule(lambda v: _number(v) and v <= high, f"<= {high}")


def between(low: float, high: float, *, open_low: bool = False,
            open_high: bool = False) -> Rule:
    """The interval from ``low`` to ``high``, closed unless an end is said to be open."""
    def test(v: Any) -> bool:
        return (_number(v) and (v > low if open_low else v >= low)
                and (v < high if open_high else v <= high))
    return Rule(test, f"in {'(' if open_low else '['}{low}, {high}{')' if open_high else ']'}")


def finite(rule: Rule) -> Rule:
    """``rule``, refusing infinity too: a wait, a deadline or a distance of ``inf`` is a
    mistake, not a setting."""
    return Rule(lambda v: bool(rule.test(v)) and math.isfinite(v),
                f"a finite number {rule.wording}")


def one_of(allowed: Collection[Any]) -> Rule:
    return Rule(lambda v: v in allowed, f"one of {tuple(allowed)}")


def subset_of(allowed: Collection[Any]) -> Rule:
    """A non-empty collection drawn from ``allowed`` (a config that chooses some of them)."""
    return Rule(lambda v: len(v) > 0 and set(v) <= set(allowed),
                f"a non-empty subset of {tuple(allowed)}")


def check_fields(config: Any, **rules: Rule) -> None:
    """Raise ``ConfigError`` for the first field of ``config`` that breaks its rule,
    named ``Class.field`` so ``from_mapping`` can report it under the mapping's path."""
    for name, rule in rules.items():
        value = getattr(config, name)
        if not rule.holds(value):
            raise ConfigError(f"must be {rule.wording}, got {value!r}",
                              field=f"{type(config).__name__}.{name}")


def read_yaml(path: str | os.PathLike[str]) -> Any:
    """What a YAML config file holds (an empty file: an empty mapping), or a one-line error
    naming the file and, for a syntax error, the line and column."""
    import yaml

    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise PixmoError(f"cannot read the config: {exc.strerror}", file=str(path)) from exc
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise PixmoError(f"invalid YAML{where}: {exc.problem}", file=str(path)) from exc
    except yaml.YAMLError as exc:
        raise PixmoError(f"invalid YAML: {' '.join(str(exc).split())}", file=str(path)) from exc
    return raw if raw is not None else {}


def load_config(cls: type, path: str | os.PathLike[str] | None,
                overrides: Mapping[str, Any] = {}, names: Mapping[str, str] = {}) -> Any:
    """An instance of ``cls`` from a YAML file (``path``, if any) with ``overrides``
    (dotted keys: ``speech.qc.min_speech_s``) put over it. An error in an override's value
    is named by ``names[key]`` (the option that gave it), one in the file's by the file and
    key (``build.yaml, field config.shards.max_samples``)."""
    data = read_yaml(path) if path is not None else {}
    if not isinstance(data, dict):
        raise PixmoError(f"must be a mapping, got {data!r}", file=None if path is None
                         else str(path))
    data = copy.deepcopy(data)
    for key, value in overrides.items():
        *parents, last = key.split(".")
        node = data
        for parent in parents:
            if not isinstance(node.get(parent), dict):
                node[parent] = {}
            node = node[parent]
        node[last] = value
    try:
        return from_mapping(cls, data, "config")
    except PixmoError as exc:
        key = (exc.field or "").removeprefix("config.")
        if key in names and (key in overrides or path is None):
            raise exc.located(field=names[key]) from exc
        if path is None:
            raise
        raise exc.located(file=str(path)) from exc


def differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """The dotted keys where two plain configs (``to_plain``) differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for key in sorted(set(old) | set(new), key=str)
                for d in differences(old.get(key), new.get(key), f"{prefix}{key}.")]
    return [] if old == new else [prefix.rstrip(".") or "(the config)"]
