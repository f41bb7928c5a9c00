"""The local process pool (``pipelines.beam.pool``): batches run inline or on shared
worker processes with results in order, and the image stage a worker runs."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest

from pipelines.beam import pool
from pixmo import build
from pixmo.build import BuildConfig
from pixmo.rejects import Reject
from tests.pipelines.conftest import make_raw


def test_one_process_runs_each_element_inline_as_it_comes():
    seen: list[list[int]] = []

    def fn(batch: list[int]) -> list[int]:
        seen.append(list(batch))
        return [x * 10 for x in batch]

    batches = pool.Batches(fn, processes=1, batch_size=32)
    assert list(batches.add(1)) == [10]
    assert list(batches.add(2)) == [20]
    assert list(batches.flush()) == []
    assert seen == [[1], [2]]


def test_worker_processes_give_results_back_in_order():
    """Batches of three on two workers: every result, in the order added, whichever
    batch finishes first."""
    with pool.shared_workers():
        batches = pool.Batches(list, processes=2, batch_size=3)
        out = [result for x in range(20) for result in batches.add(x)]
        assert len(out) < 20  # the last batches are still in flight or not yet full
        out += batches.flush()
    assert out == list(range(20))


def test_workers_exist_only_inside_shared_workers():
    with pytest.raises(RuntimeError, match="inside shared_workers"):
        pool.Batches(list, processes=2)
    with pool.shared_workers(), pytest.raises(RuntimeError, match="already shared"):
        with pool.shared_workers():
            pass
    pool.Batches(list, processes=1)  # inline needs no workers


def _groups(cfg: BuildConfig) -> list[tuple[str, list[build.Packed]]]:
    """The checked records of ``cfg.raw_dir``, packed and grouped by the image they name."""
    groups: dict[str, list[build.Packed]] = {}
    for name in build.input_files(cfg.raw_dir):
        for item in build.read_raw(cfg.raw_dir, name):
            out = item if isinstance(item, Reject) else build.check_record(item)
            if not isinstance(out, Reject):
                groups.setdefault(out.image, []).append(out.pack())
    return sorted(groups.items())


def _summary(results: list[pool.ImageResult]) -> list[tuple]:
    return [(r.sha256, r.part, sorted(x.reason.value for x in r.rejects), r.annotated)
            for r in results]


def test_image_batch_loads_each_image_once_and_annotates_its_records(tmp_path: Path):
    cfg = BuildConfig(raw_dir=str(make_raw(tmp_path / "raw")), transcribe=False)
    groups = _groups(cfg)
    results = pool.image_batch(groups, cfg, str(tmp_path / "out"))
    by_ref = {ref: r for (ref, _), r in zip(groups, results, strict=True)}
    assert by_ref["images/a.png"].sha256 == by_ref["images/a_copy.png"].sha256  # same bytes
    assert [(r.sha256, r.annotated) for r in (by_ref["images/nope.png"],
                                              by_ref["images/broken.png"])] == [(None, 0)] * 2
    assert [x.reason.value for x in by_ref["images/nope.png"].rejects] == ["image_not_found"]
    assert by_ref["images/b.jpg"].rejects == [] and by_ref["images/b.jpg"].annotated == 2
    c = by_ref["images/c.png"]  # six records: one names the wrong sha256, four are bad
    assert c.annotated == 5 and "image_sha256_mismatch" in {x.reason.value for x in c.rejects}
    assert all(r.image_seconds > 0 for r in results)
    # the same batch on two worker processes (each with its own annotator): the same results
    with pool.shared_workers():
        batches = pool.Batches(partial(pool.image_batch, cfg=cfg, out_dir=str(tmp_path / "w")),
                               processes=2, batch_size=2)
        pooled = [r for group in groups for r in batches.add(group)] + list(batches.flush())
    assert _summary(pooled) == _summary(results)
