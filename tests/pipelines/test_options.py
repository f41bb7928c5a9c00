"""What the ``pixmo`` command's parts share (``pipelines/options.py``): the number flag type,
tables and sizes."""

from __future__ import annotations

import argparse

import pytest

from pipelines.options import _human_bytes, _number, _table


@pytest.mark.parametrize(("kind", "least", "strict", "text", "value"), [
    (int, 1, False, "1", 1), (float, 0, True, "0.5", 0.5), (float, 0, False, "0", 0.0)])
def test_number_takes_finite_values_in_range(kind, least, strict, text, value):
    assert _number(kind, least, strict)(text) == value


@pytest.mark.parametrize(("kind", "least", "strict", "text", "says"), [
    (int, 1, False, "0", "must be >= 1, got 0"),
    (int, 1, False, "1.5", "must be an integer, got '1.5'"),
    (float, 0, True, "0", "must be > 0, got 0"),
    (float, 0, False, "nan", "must be >= 0, got nan"),
    (float, 0, False, "x", "must be a number, got 'x'")])
def test_number_refuses_the_rest(kind, least, strict, text, says):
    with pytest.raises(argparse.ArgumentTypeError, match=f"^{says}$"):
        _number(kind, least, strict)(text)


def test_table_right_aligns_numbers():
    assert _table([("a", "1,000"), ("bb", "7")], ("name", "count")).splitlines() == [
        "name  count", "----  -----", "a     1,000", "bb        7"]


@pytest.mark.parametrize(("n", "text"), [(512, "512 B"), (1536, "1.5 KiB"),
                                         (3 << 20, "3.0 MiB"), (5 << 40, "5120.0 GiB")])
def test_human_bytes(n, text):
    assert _human_bytes(n) == text
