"""Rejects and the ledger: rows in input order, counts by reason, books that balance."""

from __future__ import annotations

from collections import Counter

import pytest

from pixmo.errors import PixmoError
from pixmo.rejects import Reason, Reject, Tally, by_reason, ledger, merge_runs, reject_rows


def _reject(source: str, record: str, reason: Reason = Reason.INVALID_RECORD,
            stage: str = "read") -> Reject:
    return Reject(stage, reason, "detail", source, record)


def test_reject_rows_are_in_input_order_whatever_order_they_came_in():
    rejects = [_reject("points.jsonl", "10"), _reject("captions.jsonl", "3"),
               _reject("points.jsonl", "9", Reason.OUT_OF_BOUNDS, "points"),
               _reject("points.jsonl", "9", Reason.EMPTY_LABEL, "image")]
    rows = reject_rows(rejects)
    assert [(r["source"], r["record"], r["stage"]) for r in rows] == [
        ("captions.jsonl", "3", "read"), ("points.jsonl", "9", "image"),
        ("points.jsonl", "9", "points"), ("points.jsonl", "10", "read")]
    assert rows == reject_rows(rejects[::-1])
    assert rows[1] == {"stage": "image", "reason": "empty_label", "detail": "detail",
                       "source": "points.jsonl", "record": "9"}


def test_runs_in_input_order_merge_to_the_rows_of_one_sort():
    """Per-partition runs, each sorted where it was made, merge lazily into the
    order ``reject_rows`` gives the whole list; a tally counts them passing by."""
    rejects = [_reject(f"f{i % 3}.jsonl", str(i), Reason.SILENCE if i % 4 else
                       Reason.INVALID_RECORD) for i in range(30)]
    runs = [reject_rows(rejects[i::4]) for i in range(4)]
    merged = merge_runs([(Reject(**{**r, "reason": Reason(r["reason"])}) for r in run)
                         for run in runs])
    tally = Tally()
    assert list(tally.count(r.to_row() for r in merged)) == reject_rows(rejects)
    assert tally.by_source == Counter(r.source for r in rejects)
    assert tally.by_reason == Counter({"silence": 22, "invalid_record": 8})


def test_by_reason_counts_rows_in_reason_order():
    rows = reject_rows([_reject("a", "1", Reason.SILENCE), _reject("a", "2"),
                        _reject("b", "1", Reason.SILENCE)])
    assert by_reason(rows) == {"invalid_record": 1, "silence": 2}
    assert list(by_reason(rows)) == ["invalid_record", "silence"]
    assert by_reason([]) == {}


def test_ledger_books_every_file_read_in_name_order():
    read = Counter({"points.jsonl": 3, "captions.jsonl": 2, "empty.jsonl": 0})
    accepted = Counter({"points.jsonl": 2, "captions.jsonl": 2})
    books = ledger(read, accepted, {"points.jsonl": 1})
    assert books == [
        {"file": "captions.jsonl", "read": 2, "accepted": 2, "rejected": 0},
        {"file": "empty.jsonl", "read": 0, "accepted": 0, "rejected": 0},
        {"file": "points.jsonl", "read": 3, "accepted": 2, "rejected": 1}]


def test_a_ledger_that_does_not_balance_names_the_file_and_the_numbers():
    with pytest.raises(PixmoError, match="read 3, accepted 1, rejected 1") as err:
        ledger({"points.jsonl": 3}, {"points.jsonl": 1}, {"points.jsonl": 1})
    assert err.value.file == "points.jsonl"
