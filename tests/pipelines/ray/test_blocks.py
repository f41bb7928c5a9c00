"""The Ray build's block functions (``pipelines.ray.blocks``), called on pyarrow tables as Ray
calls them: what each hands on and to which group, what it books, and the rejects it stages
in the output folder instead of handing them on."""

from __future__ import annotations

import zlib
from collections import Counter
from pathlib import Path

import pyarrow as pa

from pipelines.ray import blocks
from pixmo.build import BuildConfig, ShardPlan
from pixmo.build.output import staged_rejects
from pixmo.dataset.cutting import partition_of
from pixmo.dataset.writer import ShardConfig
from tests.pipelines.conftest import make_raw

GROUPS = 3


def _books(table: pa.Table) -> Counter[tuple[str, str]]:
    out: Counter[tuple[str, str]] = Counter()
    for row in blocks.books(table).to_pylist():
        out[row[blocks.KIND], row[blocks.NAME]] += row[blocks.COUNT]
    return out


def _reasons(out: str) -> Counter[str]:
    return Counter(r.reason.value for r in staged_rejects(out))


def _read(tmp_path: Path) -> tuple[BuildConfig, str, pa.Table]:
    cfg = BuildConfig(raw_dir=str(make_raw(tmp_path / "raw")), transcribe=False,
                      shards=ShardConfig(max_samples=1))
    out = str(tmp_path / "out")
    files = pa.table({"file": ["captions.jsonl", "points.jsonl"]})
    return cfg, out, pa.concat_tables(blocks.read_files(files, cfg.raw_dir, out, GROUPS))


def _grouped(table: pa.Table, group: int) -> pa.Table:
    return table.filter(pa.compute.equal(table[blocks.GROUP], group))


def test_rows_carry_packed_lists_and_book_rows_in_one_schema():
    rows = blocks.Rows()
    rows.data(2, blocks.PARTS, [("a", 1), ("b", 2)])
    rows.book(blocks.READ, {"points.jsonl": 3})
    table = rows.table()
    assert table.schema == blocks.SCHEMA
    assert list(blocks.items(table)) == [("a", 1), ("b", 2)]
    assert list(blocks.items(table, blocks.SIZES)) == []
    assert _books(table) == {(blocks.READ, "points.jsonl"): 3}
    passed = blocks.Rows()
    passed.data(0, blocks.PLANNED, [("c",)])
    assert blocks.books(passed.table(blocks.books(table))).num_rows == 1  # handed on


def test_read_sends_records_to_the_group_of_their_image_and_stages_rejects(tmp_path):
    cfg, out, table = _read(tmp_path)
    assert _books(table)[blocks.READ, "captions.jsonl"] == 4
    assert _books(table)[blocks.READ, "points.jsonl"] == 13
    records = list(blocks.items(table, blocks.RECORDS))
    assert len(records) == 17 - 3
    for group in range(GROUPS):
        refs = {packed[1] for packed in blocks.items(_grouped(table, group))}
        assert all(zlib.crc32(ref.encode()) % GROUPS == group for ref in refs)
    assert _reasons(out) == {"invalid_record": 3}  # staged, not handed on


def _images(cfg: BuildConfig, out: str, table: pa.Table, inline: bool) -> pa.Table:
    return pa.concat_tables([blocks.images(_grouped(table, group), cfg, out, GROUPS, inline)
                             for group in (blocks.BOOK, *range(GROUPS))])


def test_images_are_read_once_and_annotated_and_book_rows_pass(tmp_path):
    cfg, out, table = _read(tmp_path)
    parts = _images(cfg, out, table, inline=True)
    assert _books(parts)[blocks.READ, "points.jsonl"] == 13
    for group in range(GROUPS):
        for image, _ in blocks.items(_grouped(parts, group)):
            assert partition_of(image[1], GROUPS) == group  # the range of its content hash
    sources = Counter(image[6] for image, _ in blocks.items(parts, blocks.PARTS))
    assert sources == {"images/a.png": 1, "images/a_copy.png": 1, "images/b.jpg": 1,
                       "images/c.png": 1}
    assert _reasons(out) == {"invalid_record": 3, "image_not_found": 1, "image_unreadable": 1,
                             "image_sha256_mismatch": 1, "unknown_units": 1, "empty_label": 1,
                             "out_of_bounds": 1, "too_many_points": 1,
                             "transcription_failed": 3}  # transcription is off


def test_the_transcription_actor_annotates_what_the_inline_stage_would(tmp_path):
    cfg, out, table = _read(tmp_path)
    pairs = _images(cfg, out, table, inline=False)
    assert list(blocks.items(pairs, blocks.PARTS)) == []
    assert all(len(batch) <= blocks.PAIRS_PER_BATCH for batch in
               (list(blocks.items(pairs.slice(i, 1))) for i in range(pairs.num_rows)))
    actor = blocks.Transcribe(cfg, out, GROUPS)
    annotated = pa.concat_tables([actor(pairs.slice(i, 1)) for i in range(pairs.num_rows)])
    inline = _images(cfg, str(tmp_path / "inline"), table, inline=True)
    assert sorted(blocks.items(annotated, blocks.PARTS)) == sorted(
        blocks.items(inline, blocks.PARTS))
    assert _books(annotated)[blocks.READ, "points.jsonl"] == 13


def _joined(tmp_path: Path) -> tuple[BuildConfig, str, pa.Table]:
    from pixmo.build import Previous

    cfg, out, table = _read(tmp_path)
    parts = _images(cfg, out, table, inline=True)
    return cfg, out, pa.concat_tables([blocks.join(_grouped(parts, group), cfg, Previous(), out)
                                       for group in (blocks.BOOK, *range(GROUPS))])


def test_join_makes_one_planned_sample_per_content_hash_and_books_them(tmp_path):
    _, _, joined = _joined(tmp_path)
    planned = list(blocks.items(joined, blocks.PLANNED))
    assert len(planned) == 2  # a.png and a_copy.png are one, c.png's records all rejected
    sizes = list(blocks.items(joined, blocks.SIZES))
    assert sizes == [(p[0], p[-1]) for p in planned]
    books = _books(joined)
    assert books[blocks.SAMPLES, ""] == 2
    assert books[blocks.ACCEPTED, "points.jsonl"] == 4  # a, a_copy and b.jpg's two
    assert books[blocks.READ, "points.jsonl"] == 13
    assert set(books) >= {(blocks.SECONDS, "read"), (blocks.SECONDS, blocks.STAGES[1])}


def test_each_key_range_is_planned_and_its_shards_written(tmp_path):
    cfg, out, joined = _joined(tmp_path)
    sizes = blocks.by_partition(joined, parts=2)
    for row in sizes.to_pylist():
        assert {partition_of(key, 2) for key, _ in blocks.items(pa.Table.from_pylist(
            [row], schema=blocks.SCHEMA))} == {row[blocks.GROUP]}
    whole = blocks.plan_range(blocks.by_partition(joined, parts=1), cfg)
    keys = list(blocks.items(whole, blocks.PLAN))
    plan = ShardPlan.assign(blocks.items(joined, blocks.SIZES), cfg.shards, 0)
    assert tuple(keys) == plan.first_keys and whole[blocks.GROUP].to_pylist() == [0]
    by_shard = blocks.by_shard(joined, plan)
    assert by_shard[blocks.GROUP].to_pylist() == [0, 1]  # one sample a shard
    written = blocks.write(_grouped(by_shard, 1), cfg, out, {})
    assert written[blocks.KIND].to_pylist() == [blocks.WRITTEN]
    assert written[blocks.GROUP].to_pylist() == [1]
    assert (Path(out) / "shards").is_dir()
