"""Rejects and the ledger: every input record that does not reach the output
ends as a ``Reject`` with a reason from a closed set, and ``ledger`` proves, per
input file, that records read = records accepted + records rejected.

A build and an import book their rejects the same way: ``reject_rows`` (the rows
of ``rejects.parquet``, in input order), ``by_reason`` and ``ledger``.

The reason codes here and the ``reason`` enum of ``schemas/reject.json`` are
kept equal by a test.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

from pixmo.errors import PixmoError


class Reason(str, Enum):
    """Why a record was rejected. Grouped by the stage that rejects it."""

    # reading raw records
    INVALID_RECORD = "invalid_record"  # not JSON, or breaks its schema
    # images
    IMAGE_NOT_FOUND = "image_not_found"
    IMAGE_UNREADABLE = "image_unreadable"
    IMAGE_TOO_LARGE = "image_too_large"
    IMAGE_SHA256_MISMATCH = "image_sha256_mismatch"
    DOWNLOAD_FAILED = "download_failed"
    # audio and transcripts
    AUDIO_NOT_FOUND = "audio_not_found"
    AUDIO_UNREADABLE = "audio_unreadable"
    AUDIO_EMPTY = "audio_empty"
    SILENCE = "silence"
    SPEECH_TOO_SHORT = "speech_too_short"
    WRONG_LANGUAGE = "wrong_language"
    LOW_CONFIDENCE = "low_confidence"
    REPETITION_LOOP = "repetition_loop"
    TOO_FEW_WORDS = "too_few_words"
    TRANSCRIPTION_FAILED = "transcription_failed"
    CAPTION_FAILED = "caption_failed"
    # points
    NON_FINITE_COORDINATE = "non_finite_coordinate"
    OUT_OF_BOUNDS = "out_of_bounds"
    UNKNOWN_UNITS = "unknown_units"
    EMPTY_LABEL = "empty_label"
    TOO_MANY_POINTS = "too_many_points"
    # joining
    ALREADY_IN_DATASET = "already_in_dataset"  # extend mode: the image is in an earlier shard


@dataclass(frozen=True)
class Reject:
    """One rejected input record: which stage refused it and why."""

    stage: str
    reason: Reason
    detail: str
    source: str
    record: str

    def to_row(self) -> dict[str, str]:
        """A row of ``rejects.parquet`` (schema ``reject``)."""
        row = asdict(self)
        row["reason"] = self.reason.value
        return row


def _input_order(reject: Reject) -> tuple[str, int, str, str]:
    record = reject.record
    return reject.source, int(record) if record.isdigit() else 0, record, reject.stage


def reject_rows(rejects: Iterable[Reject]) -> list[dict[str, str]]:
    """Rows of ``rejects.parquet`` in input order (file, then record number), whatever
    order the engine or the downloads produced them in."""
    return [r.to_row() for r in sorted(rejects, key=_input_order)]


def merge_runs(runs: Iterable[Iterable[Reject]]) -> Iterator[Reject]:
    """Rejects in input order from runs each already in that order (one per
    partition, say, sorted where it was made): one reject per run in memory."""
    return heapq.merge(*runs, key=_input_order)


@dataclass
class Tally:
    """Reject rows counted by input file and by reason as they stream past."""

    by_source: Counter[str] = field(default_factory=Counter)
    by_reason: Counter[str] = field(default_factory=Counter)

    def count(self, rows: Iterable[dict[str, str]]) -> Iterator[dict[str, str]]:
        for row in rows:
            self.by_source[row["source"]] += 1
            self.by_reason[row["reason"]] += 1
            yield row


def by_reason(rows: Iterable[Mapping[str, str]]) -> dict[str, int]:
    """Reject rows counted by reason, in reason order (dataset.json's ``rejects_by_reason``)."""
    return dict(sorted(Counter(row["reason"] for row in rows).items()))


def ledger(read: Mapping[str, int], accepted: Mapping[str, int],
           rejected: Mapping[str, int]) -> list[dict[str, Any]]:
    """Per input file, in name order: records read, accepted (named by a sample) and
    rejected, each a count by file. Raises ``PixmoError`` naming the file whose
    books do not balance."""
    books = [{"file": f, "read": read[f], "accepted": accepted.get(f, 0),
              "rejected": rejected.get(f, 0)} for f in sorted(read)]
    for entry in books:
        if entry["read"] != entry["accepted"] + entry["rejected"]:
            raise PixmoError(f"ledger does not balance: read {entry['read']}, accepted "
                             f"{entry['accepted']}, rejected {entry['rejected']}",
                             file=entry["file"])
    return books
