"""The yield of one import: fractions for dataset.json, lines for the command line."""

from __future__ import annotations

from pixmo.release.report import ImportReport


def test_yields_are_fractions_and_zero_when_nothing_was_read():
    assert ImportReport("pixmo-cap", "out").yields() == {"rows": 0.0, "images": 0.0}
    report = ImportReport("pixmo-cap", "out", rows_read=8, rows_in_samples=6, images=4,
                          images_ok=3)
    assert report.yields() == {"rows": 0.75, "images": 0.75}


def test_the_summary_states_every_count_that_is_not_zero():
    report = ImportReport("pixmo-points", "out", rows_read=10, rows_in_samples=7,
                          rows_rejected=3, images=5, images_ok=4, images_downloaded=3,
                          images_cached=1, images_failed={"download_failed": 1},
                          rows_rejected_by_reason={"download_failed": 2, "out_of_bounds": 1},
                          retried=2, recovered=1, samples=4)
    assert report.lines() == [
        "pixmo-points: rows kept 7/10 (70.0%), 3 rejected",
        "images kept 4/5 (80.0%): 3 downloaded, 1 from cache, 0 unused",
        "samples written: 4 to out",
        "images failed, download_failed: 1",
        "rows rejected, download_failed: 2",
        "rows rejected, out_of_bounds: 1",
        "retried 2 URLs that failed before, 1 now ok",
    ]
    flagged = ImportReport("pixmo-count", "out", sha256_flagged=2)
    assert flagged.lines()[-1] == "2 samples kept with a flagged sha256 mismatch"
