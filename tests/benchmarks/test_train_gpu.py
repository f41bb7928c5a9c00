"""benchmarks/train_gpu.py's dry run: the tiny preset on CPU through the real ``torchrun -m
molmo train``, full fine-tuning and LoRA, each reported with its plan, so the GPU benchmark's
wiring (data, configs, metrics, plan) is checked where no GPU is."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "train_gpu.py"


def test_dry_run_reports_each_mode_with_its_plan():
    done = subprocess.run([sys.executable, str(SCRIPT), "--dry-run"], capture_output=True,
                          text=True, check=True, timeout=600)
    lines = done.stdout.splitlines()
    rows = [json.loads(line) for line in lines if line.startswith("{")]
    assert [r["mode"] for r in rows] == ["full", "lora"]
    for row in rows:
        assert row["device"] == "cpu" and row["gpus"] == 1
        assert row["tokens_per_step"] == 2 * 1024  # batch 2, full-length packed rows
        assert row["tokens_per_s"] > 0 and math.isfinite(row["final_loss"])
        assert row["planned_over_measured"] is None  # CPU: no CUDA peak to compare
    full, adapters = rows
    assert 0 < adapters["planned_gib"] < full["planned_gib"]  # no gradients or moments of the base
    assert lines[-1].startswith("lora/full tokens/s ratio: ")
