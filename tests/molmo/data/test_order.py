"""molmo/data/order.py: shard lists, epoch orders, slot ranges, block shuffling, read failures
and mixture draws."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import numpy as np
import pytest

from molmo.data.order import (
    BlockStream,
    EpochOrder,
    MixtureDraws,
    ShardCursor,
    mixture_rates,
    resolve_shards,
    slot_range,
)
from pixmo.dataset.writer import ShardConfig, write_dataset
from pixmo.errors import PixmoError
from tests.conftest import make_sample


def make_dataset(path: Path, n: int, per_shard: int, first: int = 0) -> Path:
    """A real dataset directory of ``n`` samples (``make_sample(first..)``)."""
    write_dataset(path, [make_sample(first + i) for i in range(n)], name=path.name,
                  config=ShardConfig(max_samples=per_shard))
    return path


def _members(tar_path: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(tar_path) as tar:
        return tar.getmembers()


def truncate_inside_member(tar_path: Path, member: int) -> str:
    """Cut the tar in the middle of its ``member``-th member; returns that sample's key."""
    info = _members(tar_path)[member]
    os.truncate(tar_path, info.offset_data + info.size // 2)
    return info.name.split(".", 1)[0]


def break_json(tar_path: Path, sample: int) -> str:
    """Overwrite the first byte of the ``sample``-th sample's JSON (same size, valid tar)."""
    info = [m for m in _members(tar_path) if m.name.endswith(".json")][sample]
    with open(tar_path, "r+b") as fh:
        fh.seek(info.offset_data)
        fh.write(b"X")
    return info.name.split(".", 1)[0]


def test_resolve_directory_brace_pattern_and_list(tmp_path):
    ds = make_dataset(tmp_path / "ds", 12, 5)
    shards = resolve_shards(str(ds), 3)
    assert [s.samples for s in shards] == [5, 5, 2]
    assert [s.index for s in shards] == [0, 1, 2]
    assert {s.dataset for s in shards} == {3}
    assert shards[1].url == f"{ds}/shards/pixmo-000001.tar"
    braces = resolve_shards(f"{ds}/shards/pixmo-{{000001..000002}}.tar", 0)
    assert [(s.url, s.samples) for s in braces] == [(s.url, s.samples) for s in shards[1:]]
    listed = resolve_shards((shards[2].url, f"file://{shards[0].url}"), 0)
    assert [s.samples for s in listed] == [2, 5]


def test_resolve_refuses_shards_without_marker(tmp_path):
    ds = make_dataset(tmp_path / "ds", 6, 5)
    (ds / "shards" / "pixmo-000001.json").unlink()
    assert [s.samples for s in resolve_shards(str(ds), 0)] == [5]  # uncommitted: not listed
    with pytest.raises(PixmoError, match="pixmo-000001.tar: shard has no commit marker"):
        resolve_shards(f"{ds}/shards/pixmo-{{000000..000001}}.tar", 0)
    loose = tmp_path / "loose.tar"
    loose.write_bytes((ds / "shards" / "pixmo-000000.tar").read_bytes())
    with pytest.raises(PixmoError, match="not in a dataset's shards/ folder"):
        resolve_shards(str(loose), 0)


def test_epoch_order_is_seeded_and_changes_per_epoch(tmp_path):
    shards = resolve_shards(str(make_dataset(tmp_path / "ds", 40, 4)), 0)
    a, b = EpochOrder(shards, 7, 1, 0), EpochOrder(shards, 7, 1, 0)
    assert [s.index for s in a.shards] == [s.index for s in b.shards]
    assert sorted(s.index for s in a.shards) == list(range(10))
    assert [s.index for s in EpochOrder(shards, 7, 1, 1).shards] != [s.index for s in a.shards]
    assert a.total == 40
    assert a.locate(0) == (0, 0) and a.locate(39) == (9, 3) and a.locate(6) == (1, 2)


def test_slot_ranges_partition_any_total():
    for total in (0, 1, 5, 37, 100):
        for slots in (1, 3, 4, 8):
            ranges = [slot_range(total, s, slots) for s in range(slots)]
            covered = [g for start, n in ranges for g in range(start, start + n)]
            assert covered == list(range(total))
            assert max(n for _, n in ranges) - min(n for _, n in ranges) <= 1


def test_block_stream_permutes_within_blocks_and_resumes(tmp_path):
    shards = resolve_shards(str(make_dataset(tmp_path / "ds", 23, 4)), 0)
    order = EpochOrder(shards, 1, 1, 0)
    stream = BlockStream(order, 5, 14, 14, 4, (1, 2, 3))
    items = [stream.next() for _ in range(14)]
    assert stream.exhausted
    globals_ = [order.starts[[s.index for s in order.shards].index(it.shard.index)] + it.offset
                for it in items]
    assert sorted(globals_) == list(range(5, 19))
    for b in range(4):  # each block holds exactly its own positions
        assert sorted(globals_[b * 4:(b + 1) * 4]) == list(range(5 + b * 4, min(5 + b * 4 + 4,
                                                                              19)))
    assert globals_ != list(range(5, 19))
    for k in (1, 4, 6, 13):
        resumed = BlockStream(order, 5, 14, 14, 4, (1, 2, 3), position=k)
        assert [resumed.next().sample.key for _ in range(14 - k)] == \
            [it.sample.key for it in items[k:]]


def test_finite_stream_pads_past_its_share(tmp_path):
    shards = resolve_shards(str(make_dataset(tmp_path / "ds", 10, 4)), 0)
    order = EpochOrder(shards, 0, 0, 0)
    stream = BlockStream(order, 8, None, 2, 3, (0,))
    items = [stream.next() for _ in range(6)]
    assert sum(not it.padding for it in items) == 2
    assert all(it.sample is not None for it in items)  # repeats wrap around the epoch


def test_cursor_truncated_member_loses_rest_of_shard_once(tmp_path):
    ds = make_dataset(tmp_path / "ds", 10, 5)
    key = truncate_inside_member(ds / "shards" / "pixmo-000000.tar", 5)  # 3rd sample's png
    shards = resolve_shards(str(ds), 0)
    order = EpochOrder(shards, 0, 1, 0)
    order.shards, order.starts = shards, np.asarray([0, 5, 10])  # stored order, for clarity
    cursor = ShardCursor(order)
    items = [cursor.read(g, False) for g in range(10)]
    assert [it.sample is not None for it in items] == [True, True] + [False] * 3 + [True] * 5
    assert [it.origin for it in items[2:5]] == [True, False, False]
    assert items[2].key == key and "corrupt tar" in items[2].error
    # A new cursor that starts past the failure sees the lost samples, but no new origin.
    late = ShardCursor(order).read(4, False)
    assert late.error is not None and not late.origin


def test_cursor_broken_json_and_missing_shard(tmp_path):
    ds = make_dataset(tmp_path / "ds", 10, 5)
    key = break_json(ds / "shards" / "pixmo-000001.tar", 4)  # last sample of the 2nd shard
    shards = resolve_shards(str(ds), 0)
    (ds / "shards" / "pixmo-000000.tar").unlink()
    order = EpochOrder(shards, 0, 1, 0)
    order.shards, order.starts = shards, np.asarray([0, 5, 10])
    items = [ShardCursor(order).read(g, False) for g in range(10)]
    assert [it.origin for it in items[:5]] == [True] + [False] * 4
    assert "No such file" in items[0].error
    assert all(it.sample is not None for it in items[5:9])
    assert items[9].origin and items[9].key == key
    assert "sample JSON does not parse" in items[9].error


def test_mixture_rates():
    assert np.allclose(mixture_rates([100, 400, 1600], [None] * 3), [1 / 7, 2 / 7, 4 / 7])
    assert np.allclose(mixture_rates([1, 1], [3.0, 1.0]), [0.75, 0.25])
    with pytest.raises(PixmoError, match="every dataset or for none"):
        mixture_rates([1, 2], [1.0, None])
    with pytest.raises(PixmoError, match="positive sum"):
        mixture_rates([1, 2], [0.0, 0.0])


def test_mixture_draws_match_rates_and_are_addressable():
    rates = mixture_rates([100, 400, 1600], [None] * 3)
    draws = MixtureDraws(rates, seed=3, slot=1)
    n = 20000
    counts = np.bincount([draws[k] for k in range(n)], minlength=3)
    sigma = np.sqrt(n * rates * (1 - rates))
    assert np.all(np.abs(counts - n * rates) < 4 * sigma), (counts, n * rates)
    fresh = MixtureDraws(rates, seed=3, slot=1)
    assert [fresh[k] for k in (9000, 5, 4100)] == [draws[k] for k in (9000, 5, 4100)]
    other = MixtureDraws(rates, seed=3, slot=2)
    assert [other[k] for k in range(50)] != [draws[k] for k in range(50)]


def test_fsspec_url_dataset(tmp_path):
    import fsspec

    ds = make_dataset(tmp_path / "ds", 7, 3)
    memory = fsspec.filesystem("memory")
    for path in sorted((ds / "shards").iterdir()):
        memory.pipe(f"/loader-test/shards/{path.name}", path.read_bytes())
    try:
        shards = resolve_shards("memory://loader-test", 0)
        assert [(s.url, s.samples) for s in shards] == [
            (f"memory://loader-test/shards/pixmo-00000{i}.tar", n) for i, n in
            enumerate((3, 3, 1))]
        braces = resolve_shards("memory://loader-test/shards/pixmo-{000001..000002}.tar", 0)
        assert [s.samples for s in braces] == [3, 1]
        order = EpochOrder(shards, 0, 1, 0)
        keys = [ShardCursor(order).read(g, False).key for g in range(7)]
        assert sorted(keys) == sorted(make_sample(i).key for i in range(7))
    finally:
        memory.rm("/loader-test", recursive=True)
