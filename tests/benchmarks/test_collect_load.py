"""The collect load benchmark's checks hold on a small run: every acknowledged record on disk
once, none torn, after the server is killed (its timings are printed, never asserted)."""

from __future__ import annotations

from benchmarks.collect_load import main


def test_a_small_load_loses_nothing(capsys):
    report = main(["--annotators", "3", "--submissions", "4"])
    assert (report["submissions"], report["lost"], report["duplicated"], report["torn"]) == (
        12, 0, 0, 0)
    assert report["records"] == 16  # 4 alone, then 3 x 4
    assert "0 lost, 0 duplicated, 0 torn" in capsys.readouterr().out
