"""Reading raw records: JSONL and parquet, numbered from 1, bad lines as rejects."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pixmo.errors import PixmoError
from pixmo.raw import RawRecord, read_records
from pixmo.rejects import Reason, Reject


def test_jsonl_lines_are_numbered_and_bad_ones_are_rejects(tmp_path):
    path = tmp_path / "points.jsonl"
    path.write_text('{"image": "a.jpg"}\n\n{not json\n[1, 2]\n{"image": "b.jpg"}\n')
    out = list(read_records(path, "read", source="points.jsonl"))
    assert out[0] == RawRecord("points.jsonl", "1", {"image": "a.jpg"})
    assert isinstance(out[1], Reject) and out[1].record == "3"
    assert out[1].reason is Reason.INVALID_RECORD and out[1].detail.startswith("not JSON")
    assert out[2] == Reject("read", Reason.INVALID_RECORD, "expected a JSON object, got list",
                            "points.jsonl", "4")
    assert out[3] == RawRecord("points.jsonl", "5", {"image": "b.jpg"})  # blank line 2: no record


def test_parquet_rows_drop_nulls_and_take_hf_point_columns(tmp_path):
    path = tmp_path / "points.parquet"
    pq.write_table(pa.Table.from_pylist([
        {"image": "a.jpg", "language": None, "points": {"x": [1.0, 2.0], "y": [3.0, 4.0]}},
        {"image": "b.jpg", "language": "en", "points": None},
    ]), path)
    first, second = read_records(path, "read")
    assert first.source == str(path) and first.record == "1"
    assert first.data == {"image": "a.jpg", "points": [{"x": 1.0, "y": 3.0}, {"x": 2.0, "y": 4.0}]}
    # a null points list stays: "missing" is an error, not "not present"
    assert second.data == {"image": "b.jpg", "language": "en", "points": None}


def test_a_missing_file_or_another_format_is_a_user_error(tmp_path):
    with pytest.raises(PixmoError, match="input file not found"):
        list(read_records(tmp_path / "none.jsonl", "read"))
    (tmp_path / "points.csv").write_text("image\n")
    with pytest.raises(PixmoError, match="expected a .jsonl or .parquet file, got '.csv'"):
        list(read_records(tmp_path / "points.csv", "read"))
