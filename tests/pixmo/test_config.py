"""Typed configs to and from plain mappings, and the range rules (``pixmo.config``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest

from pixmo.config import (
    above,
    at_least,
    at_most,
    between,
    check_fields,
    finite,
    from_mapping,
    one_of,
    subset_of,
    to_plain,
)
from pixmo.errors import ConfigError, PixmoError


@dataclass(frozen=True)
class Inner:
    size: int = 1
    ratio: float = 0.5

    def __post_init__(self) -> None:
        check_fields(self, size=at_least(1), ratio=between(0, 1))


@dataclass(frozen=True)
class Outer:
    name: str
    inner: Inner = field(default_factory=Inner)
    items: tuple[Inner, ...] = ()
    shape: tuple[int, int] = (2, 3)
    tags: tuple[str, ...] = ()
    limit: float | None = None
    extra: dict[str, int] = field(default_factory=dict)


def test_from_mapping_builds_nested_configs_and_tuples():
    cfg = from_mapping(Outer, {"name": "run", "inner": {"size": 4}, "items": [{"ratio": 1}],
                               "shape": [5, 6], "tags": ["a", "b"], "limit": 3,
                               "extra": {"k": 1}}, "config")
    assert cfg == Outer(name="run", inner=Inner(size=4), items=(Inner(ratio=1),),
                        shape=(5, 6), tags=("a", "b"), limit=3, extra={"k": 1})
    hash(cfg.shape)  # lists became tuples: configs stay hashable
    assert from_mapping(Outer, {"name": "n"}, "config") == Outer(name="n")


@pytest.mark.parametrize(("data", "error", "line"), [
    ({"name": "n", "colour": 1}, PixmoError, "field config: unknown keys ['colour']"),
    ({"name": "n", "inner": {"sizes": 2}}, PixmoError, "field config.inner: unknown keys"),
    ({"name": "n", "inner": 3}, ConfigError, "config.inner must be a mapping, got 3"),
    ({}, ConfigError, "config.name is required"),
    ({"name": 7}, ConfigError, "config.name must be str, got 7"),
    ({"name": "n", "inner": {"size": True}}, ConfigError, "config.inner.size must be int, "
                                                          "got True"),
    ({"name": "n", "inner": {"size": 1.5}}, ConfigError, "config.inner.size must be int"),
    ({"name": "n", "limit": "x"}, ConfigError, "config.limit must be float or null, got 'x'"),
    ({"name": "n", "shape": [1]}, ConfigError, "config.shape must be [int, int], got [1]"),
    ({"name": "n", "tags": [1]}, ConfigError, "config.tags must be a list of str, got [1]"),
    ({"name": "n", "items": [{"size": "2"}]}, ConfigError,
     "config.items[0].size must be int, got '2'"),
    # a value the class itself refuses is reported under the mapping's path
    ({"name": "n", "inner": {"size": 0}}, ConfigError, "config.inner.size must be >= 1, got 0"),
    ({"name": "n", "items": [{}, {"ratio": 2}]}, ConfigError,
     "config.items[1].ratio must be in [0, 1], got 2"),
])
def test_from_mapping_names_the_key_that_is_wrong(data, error, line):
    with pytest.raises(error) as raised:
        from_mapping(Outer, data, "config")
    assert str(raised.value).startswith(line), str(raised.value)


def test_an_int_is_a_float_but_not_the_other_way():
    assert from_mapping(Inner, {"ratio": 1}, "c").ratio == 1


def test_to_plain_gives_dicts_and_lists():
    cfg = Outer(name="n", items=(Inner(),), tags=("a",))
    plain = to_plain(cfg)
    assert plain == {"name": "n", "inner": {"size": 1, "ratio": 0.5},
                     "items": [{"size": 1, "ratio": 0.5}], "shape": [2, 3], "tags": ["a"],
                     "limit": None, "extra": {}}
    assert from_mapping(Outer, plain, "config") == cfg  # and back
    assert to_plain({"a": (1, [Inner()])}) == {"a": [1, [{"size": 1, "ratio": 0.5}]]}


@dataclass
class Ranges:
    a: float | None = 0
    b: float | None = 1
    c: float | None = 0
    d: float | None = 0.5
    e: float | None = 0.5
    f: float | None = 0
    mode: str | None = "x"
    kinds: tuple[str, ...] | None = ("x",)


RULES = {"a": at_least(0), "b": above(0), "c": at_most(1), "d": between(0, 1),
         "e": between(0, 1, open_low=True), "f": finite(at_least(0)),
         "mode": one_of(("x", "y")), "kinds": subset_of(("x", "y"))}


@pytest.mark.parametrize(("name", "good", "bad", "says"), [
    ("a", [0, 5, 0.0], [-1, -0.5], "must be >= 0"),
    ("b", [1e-9, 2], [0, -1], "must be > 0"),
    ("c", [1, -3], [1.5], "must be <= 1"),
    ("d", [0, 1, 0.25], [-0.1, 1.1], "must be in [0, 1]"),
    ("e", [1, 1e-9], [0, 1.5], "must be in (0, 1]"),
    ("f", [0, 1e300], [math.inf, -1], "must be a finite number >= 0"),
    ("kinds", [("x",), ("y", "x")], [(), ("x", "z")], "must be a non-empty subset of ('x', 'y')"),
    ("mode", ["x", "y"], ["z", ""], "must be one of ('x', 'y')"),
])
def test_rules(name, good, bad, says):
    for value in [*good, None]:  # None: an unset optional passes every rule
        check_fields(Ranges(**{name: value}), **RULES)
    for value in bad:
        with pytest.raises(ConfigError) as raised:
            check_fields(Ranges(**{name: value}), **RULES)
        assert str(raised.value) == f"Ranges.{name} {says}, got {value!r}"
        assert raised.value.field == f"Ranges.{name}"


@pytest.mark.parametrize("name", ["a", "b", "c", "d", "e", "f"])
def test_nan_fails_every_numeric_rule(name):
    with pytest.raises(ConfigError, match=f"^Ranges.{name} must be .*, got nan$"):
        check_fields(Ranges(**{name: math.nan}), **RULES)


def test_the_first_broken_field_is_reported():
    with pytest.raises(ConfigError, match="^Ranges.b "):
        check_fields(Ranges(a=0, b=-1, c=5), **RULES)
