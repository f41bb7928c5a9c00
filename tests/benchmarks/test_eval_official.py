"""benchmarks/eval_official.py's dry run: the official-layout tiny fixture evaluated on CPU
on every benchmark through ``molmo eval --benchmark``'s runner, each compared with the
published Molmo-7B-D number, so the script's wiring is checked where no weights are."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "eval_official.py"


def test_dry_run_reports_every_benchmark_against_the_paper():
    done = subprocess.run([sys.executable, str(SCRIPT), "--dry-run"], capture_output=True,
                          text=True, check=True, timeout=600)
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(r["benchmark"], r["metric"], r["examples"]) for r in rows] == [
        ("pixmo-count", "accuracy", 12), ("countbench", "accuracy", 6),
        ("pixmo-points-eval", "f1", 6)]
    assert [r["published_7b_d"] for r in rows] == [84.8, 88.5, 74.3]
    for row in rows:
        assert 0 <= row["ours"] <= 100 and row["device"] == "cpu"
        assert row["ours/published"] == round(row["ours"] / row["published_7b_d"], 4)
        assert row["answers_per_s"] > 0
