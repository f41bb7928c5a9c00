"""Tests of pixmo.dataset.tables: manifest, rejects and dataset.json."""

from __future__ import annotations

import json

import pytest

from pixmo.dataset import tables
from pixmo.dataset.format import ShardStats
from pixmo.dataset.writer import ShardConfig, write_dataset
from pixmo.errors import PixmoError
from tests.conftest import make_sample


def test_manifest_and_rejects_tables(tmp_path, samples):
    rejects = [{"source": "points.jsonl", "record": "7", "stage": "points",
                "reason": "out_of_bounds", "detail": "x=900 beyond width 640"}]
    description = write_dataset(tmp_path, samples, name="t", rejects=rejects,
                                config=ShardConfig(max_samples=10))
    rows = tables.read_manifest(tmp_path / "manifest.parquet")
    assert [r["key"] for r in rows] == [s.key for s in samples]
    assert rows[0] == {"key": samples[0].key, "shard": "pixmo-000000.tar",
                       "image_sha256": samples[0].json["image"]["sha256"], "width": 32,
                       "height": 24, "transcripts": 0, "captions": 1, "points": 1, "qa": 0}
    assert rows[-1]["shard"] == "pixmo-000002.tar"
    assert tables.read_rejects(tmp_path / "rejects.parquet") == rejects
    assert description["counts"] == {"samples": 23, "shards": 3, "bytes": description["counts"]
                                     ["bytes"], "transcripts": 0, "captions": 23, "points": 23,
                                     "qa": 0, "rejects": 1}
    on_disk = json.loads((tmp_path / "dataset.json").read_text())
    assert on_disk == description


def test_manifest_streams_in_row_groups(tmp_path, samples):
    import pyarrow.parquet as pq

    rows = [tables.manifest_row(s, "pixmo-000000.tar") for s in samples]
    tables.write_manifest(iter(rows), tmp_path / "m.parquet", row_group=10)
    assert pq.ParquetFile(tmp_path / "m.parquet").num_row_groups == 3
    assert tables.read_manifest(tmp_path / "m.parquet") == rows
    with pytest.raises(PixmoError, match="width"):
        tables.write_manifest([{**rows[0], "width": "wide"}], tmp_path / "bad.parquet")
    assert not (tmp_path / "bad.parquet").exists()


def _rejects(n: int) -> list[dict[str, str]]:
    return [{"stage": "read", "reason": "invalid_record", "detail": f"line {i}",
             "source": "points.jsonl", "record": str(i)} for i in range(n)]


def test_rejects_stream_in_row_groups_and_keep_their_bytes(tmp_path):
    """Up to a row group, the bytes of one ``write_table`` of the whole table
    (what every earlier build wrote); beyond, one row group per ``row_group``."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = _rejects(25)
    tables.write_rejects(iter(rows), tmp_path / "r.parquet")
    whole = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=pq.read_schema(tmp_path / "r.parquet")),
                   whole)
    assert (tmp_path / "r.parquet").read_bytes() == whole.getvalue()
    tables.write_rejects(iter(rows), tmp_path / "g.parquet", row_group=10)
    assert pq.ParquetFile(tmp_path / "g.parquet").num_row_groups == 3
    assert tables.read_rejects(tmp_path / "g.parquet") == rows
    with pytest.raises(PixmoError, match="reason"):
        tables.write_rejects([{**rows[0], "reason": "no_such_reason"}], tmp_path / "bad.parquet")
    assert not (tmp_path / "bad.parquet").exists()


@pytest.mark.parametrize(("columns", "limit"), [
    (None, None), (["reason"], None), (["record"], 7), (None, 0), (None, 10), (None, 99)])
def test_iter_rows_reads_columns_and_a_prefix_by_row_group(tmp_path, columns, limit):
    rows = _rejects(25)
    tables.write_rejects(rows, tmp_path / "r.parquet", row_group=10)
    got = list(tables.iter_rows(tmp_path / "r.parquet", columns, limit))
    assert got == [{k: r[k] for k in columns or r} for r in rows][:limit]


def _stats(index: int, samples: int, captions: int) -> ShardStats:
    return ShardStats(shard=f"pixmo-{index:06d}.tar", index=index, samples=samples,
                      bytes=10240 * (index + 1), sha256=f"{index:064x}", first_key="a",
                      last_key="b", counts={"transcripts": 0, "captions": captions,
                                            "points": 0, "qa": 1})


def test_describe_sums_the_shards_and_round_trips(tmp_path):
    body = tables.describe("demo", [_stats(0, 3, 2), _stats(1, 1, 5)], engine="local")
    assert body["counts"] == {"samples": 4, "shards": 2, "bytes": 30720, "transcripts": 0,
                              "captions": 7, "points": 0, "qa": 2}
    assert [s["shard"] for s in body["shards"]] == ["pixmo-000000.tar", "pixmo-000001.tar"]
    assert body["engine"] == "local" and body["format_version"] == 1
    body["counts"]["rejects"] = 0
    tables.write_dataset_json(body, tmp_path / "dataset.json")
    assert tables.read_dataset_json(tmp_path / "dataset.json") == body
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(PixmoError, match="not JSON"):
        tables.read_dataset_json(tmp_path / "broken.json")


def test_manifest_row_counts_annotations():
    sample = make_sample(4)
    row = tables.manifest_row(sample, "pixmo-000002.tar")
    assert row["shard"] == "pixmo-000002.tar" and row["key"] == sample.key
    assert (row["captions"], row["points"], row["qa"], row["transcripts"]) == (1, 1, 0, 0)


@pytest.mark.parametrize("where", ["local", "memory"])
def test_write_tables_finishes_a_folder_with_dataset_json_last(tmp_path, where):
    import uuid

    from pixmo.remote import Folder

    out = str(tmp_path / "ds") if where == "local" else f"memory://tables-{uuid.uuid4().hex}"
    folder = Folder(out)
    folder.makedirs("")
    rows = [tables.manifest_row(make_sample(i), "pixmo-000000.tar") for i in range(3)]
    rejects = [{"source": "a.jsonl", "record": "1", "stage": "points", "reason": "invalid_record",
                "detail": "x"}]
    body = tables.describe("t", [_stats(0, 3, 3)])
    body["counts"]["rejects"] = 1
    tables.write_tables(out, rows, rejects, body)
    assert folder.glob("*") == ["dataset.json", "manifest.parquet", "rejects.parquet"]
    with folder.local_copy("manifest.parquet") as path:
        assert tables.read_manifest(path) == rows
    assert json.loads(folder.read_bytes("dataset.json")) == body
    folder.remove("dataset.json")
    with pytest.raises(PixmoError, match="dataset.json"):  # invalid: the tables are written,
        tables.write_tables(out, rows, rejects, {**body, "name": 7})  # dataset.json is not
    assert not folder.is_file("dataset.json") and folder.is_file("rejects.parquet")
