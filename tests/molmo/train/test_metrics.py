"""molmo/train/metrics.py: global loss aggregation, per-dataset loss, FLOP estimate, writers."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from molmo.model.config import preset
from molmo.model.molmo import Molmo
from molmo.train.config import MetricsConfig
from molmo.train.metrics import FlopModel, MetricsWriter, StepTotals, peak_flops


def test_losses_are_weighted_means_over_all_micro_batches():
    totals = StepTotals(["caps", "points"])
    totals.add(torch.tensor([6.0, 2.0]), torch.tensor([3.0, 1.0]), 8.0, 50, ["caps", "points"],
               [False, False])
    totals.add(torch.tensor([4.0, 0.0]), torch.tensor([4.0, 0.0]), 2.0, 30, ["caps", "caps"],
               [False, True])
    out = totals.reduce(torch.device("cpu"))
    assert out["loss"] == pytest.approx(12.0 / 8.0)  # not the mean of per-batch means
    assert out["z_loss"] == pytest.approx(10.0 / 8.0)
    assert out["loss/caps"] == pytest.approx(10.0 / 7.0)
    assert out["loss/points"] == pytest.approx(2.0)
    assert (out["tokens"], out["samples"]) == (80.0, 3.0)  # the padding repeat is no sample


def test_flops_are_six_per_parameter_and_token_plus_attention():
    model = Molmo(preset("tiny"))
    f = FlopModel.of(model)
    llm = sum(p.numel() for p in model.llm.blocks.parameters()) + model.llm.lm_head.weight.numel()
    assert f.llm_params == llm
    assert f.llm_attention == 2 * 4 * 16  # layers x heads x head_dim
    assert f.vit_positions == 577
    no_images = f.step_flops(tokens=100, seq_len=50, crops=0)
    assert no_images == pytest.approx(100 * (6 * llm + 12 * 128 * 50))
    assert f.step_flops(100, 50, 2) > no_images
    moe = FlopModel.of(Molmo(preset("tiny-moe")))
    dense_part = moe.llm_params  # experts counted at top-2 of 8
    full = sum(p.numel() for p in Molmo(preset("tiny-moe")).llm.blocks.parameters())
    assert dense_part < full


def test_peak_flops():
    assert peak_flops(MetricsConfig(), torch.device("cpu")) is None
    assert peak_flops(MetricsConfig(peak_tflops=989), torch.device("cpu")) == 989e12


def test_writer_keeps_one_run_on_resume(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="molmo.train.metrics")
    cfg = MetricsConfig(tensorboard=True, progress_bar=False)
    writer = MetricsWriter(tmp_path, cfg, 10, None)
    for step in (1, 2, 3, 4):
        writer.write({"step": step, "loss": 1.0 / step, "tokens_per_s": 5.0})
    writer.close()
    resumed = MetricsWriter(tmp_path, cfg, 10, 2)  # checkpoint at 2; 3 and 4 will be redone
    resumed.write_eval(2, {"pointing_f1": 0.5, "note": "text"})
    resumed.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 2]
    assert rows[-1] == {"step": 2, "eval/pointing_f1": 0.5}
    assert "eval at step 2: {'eval/pointing_f1': 0.5}" in caplog.text  # on the console too
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    fresh = MetricsWriter(tmp_path, cfg, 10, None)  # a new run starts an empty file
    fresh.close()
    assert (tmp_path / "metrics.jsonl").read_text() == ""
