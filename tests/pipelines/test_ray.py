"""The Ray Data graph's batch functions (``pipelines.ray``), called on plain numpy batches
as Ray would call them; the whole Ray build against Beam's is in ``test_build.py``."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from pipelines import ray as ray_engine
from pixmo.build import BuildConfig
from pixmo.images import LoadedImage
from pixmo.rejects import Reject
from tests.pipelines.conftest import make_raw


def _records(tmp_path: Path) -> tuple[BuildConfig, ray_engine.Batch]:
    cfg = BuildConfig(raw_dir=str(make_raw(tmp_path / "raw")), transcribe=False)
    files = ray_engine._batch(["captions.jsonl", "points.jsonl"])
    return cfg, ray_engine._read(files, cfg.raw_dir)


def test_batch_is_one_object_column_and_its_keys():
    batch = ray_engine._batch([("a", 1), ("b", 2)], key=lambda o: o[0])
    assert batch[ray_engine.OBJ].dtype == object and list(batch[ray_engine.OBJ]) == [("a", 1),
                                                                                    ("b", 2)]
    assert list(batch[ray_engine.KEY]) == ["a", "b"]
    assert set(ray_engine._batch([])) == {ray_engine.OBJ}


def test_read_keys_records_by_image_and_rejects_by_nothing(tmp_path):
    _, batch = _records(tmp_path)
    objs, keys = list(batch[ray_engine.OBJ]), list(batch[ray_engine.KEY])
    assert Counter(ray_engine._source(o) for o in objs) == {"captions.jsonl": 4,
                                                           "points.jsonl": 13}
    rejects = [o for o in objs if isinstance(o, Reject)]
    assert sorted(r.reason.value for r in rejects) == ["invalid_record"] * 3
    assert all(k == "" for o, k in zip(objs, keys, strict=True) if isinstance(o, Reject))
    assert Counter(keys)["images/c.png"] == 6


def _group(batch: ray_engine.Batch, key: str) -> ray_engine.Batch:
    rows = np.asarray(batch[ray_engine.KEY]) == key
    return {name: column[rows] for name, column in batch.items()}


def test_resolve_loads_the_image_and_pairs_it_with_its_records(tmp_path):
    cfg, batch = _records(tmp_path)
    out = str(tmp_path / "out")
    rejects = _group(batch, "")
    assert list(ray_engine._resolve(rejects, cfg, out)[ray_engine.OBJ]) == list(
        rejects[ray_engine.OBJ])  # rejects pass through untouched
    (missing,) = ray_engine._resolve(_group(batch, "images/nope.png"), cfg, out)[ray_engine.OBJ]
    assert missing.reason.value == "image_not_found"
    (reject, image, *pairs) = ray_engine._resolve(_group(batch, "images/c.png"), cfg,
                                                  out)[ray_engine.OBJ]  # rejects come first
    assert reject.reason.value == "image_sha256_mismatch" and isinstance(image, LoadedImage)
    assert len(pairs) == 5 and all(img is image for img, _ in pairs)
    assert ray_engine._sha(image) == image.sha256 and ray_engine._sha(reject) == ""


def test_summary_keeps_rejects_whole_and_samples_small():
    reject = Reject("read", "invalid_record", "not json", "points.jsonl", "12")

    class Planned:
        key, size = "k1", 4096

    batch = ray_engine._batch([reject, (Planned(), ["points.jsonl"], ["transcription_failed"])])
    assert list(ray_engine._summary(batch)[ray_engine.OBJ]) == [
        reject, ("k1", 4096, ["points.jsonl"], ["transcription_failed"])]
