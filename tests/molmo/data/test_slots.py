"""molmo/data/slots.py: one slot's examples and batches through the real loader: failures
skipped and counted, model-ready batches, truncation that keeps the image block."""

from __future__ import annotations

import logging

import pytest
import torch

from molmo.data.config import DatasetConfig
from molmo.data.loader import MolmoLoader
from molmo.data.tasks import TaskConfig
from molmo.preprocess.batching import normalize_images
from pixmo.dataset.writer import ShardConfig, write_dataset
from pixmo.errors import PixmoError
from tests.conftest import make_sample
from tests.molmo.data.test_loader import PRE, config, make_tokenizer, run
from tests.molmo.data.test_order import break_json, make_dataset, truncate_inside_member


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tok"))


def test_corrupt_shard_and_broken_json_skipped_and_counted(tokenizer, tmp_path, caplog):
    ds = make_dataset(tmp_path / "ds", 20, 5)
    truncated = truncate_inside_member(ds / "shards" / "pixmo-000000.tar", 5)  # 3rd sample
    broken = break_json(ds / "shards" / "pixmo-000002.tar", 1)  # 2nd of 5: the rest still read
    caplog.set_level(logging.WARNING)
    totals = []
    for workers in (0, 2):
        cfg = config(DatasetConfig("ds", str(ds)), mode="finite", num_workers=workers)
        loader = MolmoLoader(cfg, tokenizer, PRE)
        keys = [k for _, info, _ in run(loader) for k, p in zip(info.keys, info.padding,
                                                                  strict=True) if not p]
        assert len(keys) == len(set(keys)) == 20 - 3 - 1
        assert truncated not in keys and broken not in keys
        stats = loader.stats()
        assert stats["failures"] == 2  # one per broken shard or sample
        assert stats["failed_samples"] == 4  # 3 lost from the truncated shard, 1 broken JSON
        totals.append(stats)
    assert totals[0] == totals[1]
    logged = caplog.text
    assert f"pixmo-000000.tar from offset 2 (key {truncated})" in logged
    assert "corrupt tar" in logged
    assert f"skipping sample {broken} of shard {ds}/shards/pixmo-000002.tar" in logged
    assert "sample JSON does not parse" in logged


def test_undecodable_image_is_skipped_and_consecutive_failures_stop(tokenizer, tmp_path):
    samples = [make_sample(i) for i in range(8)]
    for s in samples[5:]:
        s.files = {"png": b"not a png"}
    write_dataset(tmp_path / "ds", samples, name="ds", config=ShardConfig(max_samples=10))
    source = DatasetConfig("ds", str(tmp_path / "ds"))
    # One slot: its 3 failures are made up by repeats of samples 0-3 (the next block).
    loader = MolmoLoader(config(source, mode="finite", num_workers=0), tokenizer, PRE)
    batches = run(loader)
    keys = [k for _, info, _ in batches for k, p in zip(info.keys, info.padding, strict=True)
            if not p]
    assert sorted(keys) == sorted(s.key for s in samples[:5])
    assert len(batches) == loader.batches_per_epoch == 4
    assert loader.stats() == {"examples": 8, "padding": 3, "empty": 0, "failed_samples": 3,
                              "failures": 3}
    # Worker 1 reads samples 4-7 in one shuffled block: at least two failures in a row.
    for worker_type in ("process", "thread"):
        strict = config(source, mode="finite", num_workers=2, max_consecutive_failures=1,
                        worker_type=worker_type)
        with pytest.raises(PixmoError, match=r"2 consecutive samples failed, more than "
                                             r"max_consecutive_failures 1; the last: "
                                             r".*cannot decode"):
            run(MolmoLoader(strict, tokenizer, PRE))


def test_no_usable_sample_stops_instead_of_spinning(tokenizer, tmp_path):
    write_dataset(tmp_path / "ds", [make_sample(i) for i in range(5)], name="ds")
    only_qa = DatasetConfig("ds", str(tmp_path / "ds"), tasks=TaskConfig(tasks=("qa",)))
    loader = MolmoLoader(config(only_qa, num_workers=0), tokenizer, PRE)
    with pytest.raises(PixmoError, match="no usable sample in 6 positions in a row, more than "
                                         "the 5 samples"):
        run(loader, 1)


@pytest.mark.parametrize("pixel_dtype", ["uint8", "float32"])
def test_batches_are_model_ready(tokenizer, tmp_path, pixel_dtype):
    samples = [make_sample(i, size=(32 + 90 * (i % 3), 24)) for i in range(8)]
    for s in samples[::2]:  # more conversations on some samples
        s.json["qa"] = [{"question": "What is it?", "answer": "A square."}]
    write_dataset(tmp_path / "ds", samples, name="ds")
    cfg = config(DatasetConfig("ds", str(tmp_path / "ds")), batch_size=4, num_workers=0,
                 mode="finite", pixel_dtype=pixel_dtype)
    for batch, _, _ in run(MolmoLoader(cfg, tokenizer, PRE)):
        assert batch["images"].dtype == getattr(torch, pixel_dtype)
        if pixel_dtype == "uint8":
            assert batch["crop_mask"].shape == batch["images"].shape[:2]
            batch = normalize_images(batch, PRE)
        ids, labels, weights = batch["input_ids"], batch["labels"], batch["loss_masks"]
        assert ids.dtype == torch.int64 and batch["images"].dtype == torch.float32
        lengths = (ids != -1).sum(1)
        assert ids.shape[1] == lengths.max()  # padded to the longest, no further
        crops = (batch["images"] != -1).flatten(2).any(2).sum(1)
        assert batch["images"].shape[1] == crops.max()
        for row in range(ids.shape[0]):
            sub = batch["subsegment_ids"][row, : lengths[row]]
            k = len(set(sub.tolist()) - {10000})
            targets = labels[row] != -100
            assert torch.allclose(weights[row][targets], torch.tensor((1 / k) ** 0.5))
            assert (weights[row][~targets] == 0).all()
            idx = batch["image_input_idx"][row]
            assert idx.max() < lengths[row]


def test_truncation_keeps_the_image_block(tokenizer, tmp_path):
    write_dataset(tmp_path / "ds", [make_sample(i) for i in range(4)], name="ds")
    source = DatasetConfig("ds", str(tmp_path / "ds"))
    uncapped = run(MolmoLoader(config(source, num_workers=0, mode="finite"), tokenizer, PRE))
    image_end = int(max(b["image_input_idx"].max() for b, _, _ in uncapped)) + 2
    cap = image_end + 5
    capped = run(MolmoLoader(config(source, num_workers=0, mode="finite",
                                    max_sequence_length=cap), tokenizer, PRE))
    for (full, _, _), (cut, _, _) in zip(uncapped, capped, strict=True):
        assert cut["input_ids"].shape[1] == cap < full["input_ids"].shape[1]
        assert torch.equal(cut["input_ids"], full["input_ids"][:, :cap])
        assert torch.equal(cut["image_input_idx"], full["image_input_idx"])
    too_small = config(source, num_workers=0, mode="finite", max_sequence_length=20,
                       max_consecutive_failures=0)
    with pytest.raises(PixmoError, match="BOS \\+ image block need .* more than "
                                         "max_sequence_length 20"):
        run(MolmoLoader(too_small, tokenizer, PRE))
