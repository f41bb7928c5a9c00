"""The HTML report: self-contained, with every section, tolerant of a run that
has not written all its files, and rendered for real by headless Chromium."""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixmo.dataset.format import ShardSample
from pixmo.dataset.samples import sample_key
from pixmo.dataset.writer import ShardConfig, write_dataset
from pixmo.errors import PixmoError
from pixmo.report.page import write_report
from pixmo.synth.scenes import SceneConfig, describe, make_scene, render

N_SAMPLES = 5


def _scene_sample(i: int) -> ShardSample:
    rng = np.random.default_rng([5, i])
    scene = make_scene(rng, SceneConfig(counting_share=0.5))
    buf = io.BytesIO()
    render(scene, rng).save(buf, format="PNG")
    data = buf.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    truth = scene.truth()
    points = [{"label": lab["label"], "points": lab["points"], "count": lab["count"],
               "collection_method": lab["collection_method"], "annotators": ["p1"]}
              for lab in truth["labels"]]
    points.append({"label": "pink elephant", "points": [], "count": 0,
                   "collection_method": "pointing", "annotators": ["p2"]})
    sample = {"schema_version": 1, "key": sample_key(digest),
              "image": {"sha256": digest, "width": scene.width, "height": scene.height,
                        "format": "png", "source": f"images/{i:05d}.png"},
              "transcripts": [], "captions": [{"text": describe(scene, rng),
                                               "method": "cleanup"}],
              "points": points, "qa": [],
              "sources": [{"file": "points.jsonl", "record": str(i + 1)}]}
    return ShardSample(key=sample_key(digest), json=sample, files={"png": data})


REJECTS = [{"stage": "validate_points", "reason": reason, "detail": "test", "source":
            "points.jsonl", "record": str(100 + n)}
           for n, reason in enumerate(["out_of_bounds"] * 3 + ["empty_label"] * 2
                                      + ["image_not_found"])]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, list[ShardSample]]:
    out = tmp_path_factory.mktemp("report") / "dataset"
    samples = [_scene_sample(i) for i in range(N_SAMPLES)]
    write_dataset(out, samples, name="report-test", config=ShardConfig(max_samples=2),
                  rejects=REJECTS)
    return out, samples


def _run_dir(root: Path, samples: list[ShardSample]) -> Path:
    run = root / "run"
    (run / "eval").mkdir(parents=True)
    lines = [json.dumps({"step": s, "loss": 4.0 * 0.9 ** s, "lr": 1e-4, "tokens": 512 * s})
             for s in range(1, 31)]
    (run / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 31, "lo')  # mid-write
    (run / "eval/eval.json").write_text(json.dumps({
        "counting_accuracy": 0.625, "majority_baseline_accuracy": 0.25,
        "pointing_f1": 0.4375, "num_eval_examples": 16, "extra_metric": 3}))
    preds = []
    for sample in samples[:3]:
        first = sample.json["points"][0]
        preds.append({"key": sample.key, "label": first["label"],
                      "predicted_points": [[p[0] + 2, p[1] - 1] for p in first["points"]],
                      "true_points": first["points"], "predicted_count": first["count"],
                      "true_count": first["count"], "extra": True})
    preds.append({"key": "not-in-dataset", "label": "x", "predicted_points": [],
                  "true_points": [[1, 2]], "predicted_count": 0, "true_count": 1})
    (run / "eval/predictions.jsonl").write_text("".join(json.dumps(p) + "\n" for p in preds))
    return run


def test_report_is_self_contained_and_complete(dataset, tmp_path):
    ds, samples = dataset
    run = _run_dir(tmp_path, samples)
    out = write_report(ds, tmp_path / "report.html", run_dir=run, eval_dataset_dir=ds)
    page = out.read_text()
    assert [p.name for p in tmp_path.iterdir() if "partial" in p.name] == []
    srcs = re.findall(r'<img src="([^"]+)"', page)
    assert len(srcs) == N_SAMPLES + 3  # thumbnails + predictions whose image is known
    assert all(s.startswith(("data:image/jpeg;base64,", "data:image/png;base64,"))
               for s in srcs)
    assert not re.search(r'(src|href)="(?!data:)', page)
    assert "<script" not in page and "<link" not in page and "url(" not in page
    assert page.count("<svg") == 6  # rejects, 4 histograms, loss
    assert "<td>out_of_bounds</td><td class=\"n\">3</td>" in page
    assert "<td>empty_label</td><td class=\"n\">2</td>" in page
    for sample in samples:
        assert sample.key in page
        assert sample.json["captions"][0]["text"][:40] in page
    assert "pink elephant (0)" in page
    # the loss curve: 30 steps, the half-written line is counted, not plotted
    (loss_svg,) = [s for s in page.split("<svg")[1:] if "training loss" in s]
    assert loss_svg.count(" L") == 29
    assert "1 line(s) of metrics.jsonl are not JSON objects" in page
    assert "last loss 0.17 at step 30" in page
    for name, value in [("counting_accuracy", "0.625"), ("majority_baseline_accuracy", "0.25"),
                        ("pointing_f1", "0.438"), ("num_eval_examples", "16"),
                        ("extra_metric", "3")]:
        assert f"<td>{name}</td><td class=\"n\">{value}</td>" in page
    assert page.count("image not in the eval dataset given") == 1


def test_report_tolerates_missing_run_files(dataset, tmp_path):
    ds, _ = dataset
    run = tmp_path / "run"
    run.mkdir()
    page = write_report(ds, tmp_path / "r.html", run_dir=run).read_text()
    for note in ("no metrics.jsonl yet", "no eval/eval.json yet",
                 "no eval/predictions.jsonl yet"):
        assert note in page
    plain = write_report(ds, tmp_path / "plain.html").read_text()
    assert "Training run" not in plain and plain.count("<svg") == 5
    with pytest.raises(PixmoError, match="no dataset.json"):
        write_report(tmp_path, tmp_path / "x.html")


PROBE = """<script>
window.addEventListener('load', () => {
  const widths = [...document.images].map(i => i.complete ? i.naturalWidth : 0);
  const svgs = [...document.querySelectorAll('svg')].map(s => s.getBoundingClientRect().width);
  document.title = 'probe ' + JSON.stringify({widths, svgs});
});
</script>"""


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("headless Chromium is needed: apt-get install -y --no-install-recommends "
                "chromium")


def test_report_renders_in_headless_chromium(dataset, tmp_path):
    ds, samples = dataset
    run = _run_dir(tmp_path, samples)
    page = write_report(ds, tmp_path / "report.html", run_dir=run,
                        eval_dataset_dir=ds).read_text()
    probed = tmp_path / "probed.html"
    probed.write_text(page.replace("</body>", PROBE + "</body>"))
    flags = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu",
             "--disable-background-networking", "--disable-component-update",
             "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
             "--virtual-time-budget=5000"]
    dom = subprocess.run([*flags, "--dump-dom", probed.as_uri()], capture_output=True,
                         text=True, timeout=120, check=True).stdout
    found = re.search(r"<title>probe (.*?)</title>", dom)
    assert found, dom[:500]
    probe = json.loads(found.group(1).replace("&quot;", '"'))
    assert len(probe["widths"]) == N_SAMPLES + 3
    assert all(w > 0 for w in probe["widths"]), probe
    assert len(probe["svgs"]) == 6 and all(w > 100 for w in probe["svgs"]), probe

    shot = tmp_path / "shot.png"
    subprocess.run([*flags, "--hide-scrollbars", "--window-size=1200,1600",
                    f"--screenshot={shot}", (tmp_path / "report.html").as_uri()],
                   capture_output=True, timeout=120, check=True)
    with Image.open(shot) as image:
        pixels = np.asarray(image.convert("RGB"), np.float64)
    assert pixels.shape[:2] == (1600, 1200)
    assert pixels.std() > 20  # text, tables and plots, not a blank page
    assert (pixels.reshape(-1, 3) == [59, 117, 175]).all(axis=1).sum() > 500  # the bars


def test_cli_report_with_a_run(dataset, tmp_path, capsys):
    from pipelines.cli import main

    ds, samples = dataset
    run = _run_dir(tmp_path / "run", samples)
    out = tmp_path / "cli.html"
    assert main(["report", str(ds), "--out", str(out), "--run", str(run),
                 "--eval-data", str(ds)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out}"
    assert "<svg" in out.read_text()


def test_a_large_dataset_is_summarised_in_bounded_memory(dataset, tmp_path, monkeypatch):
    """Past ``LISTED`` rejects and ``SPREAD`` samples the page lists the first rejects
    and draws a seeded random share of the samples, and says so; every count is whole."""
    from pixmo.report import page as report

    ds, _ = dataset
    monkeypatch.setattr(report, "LISTED", 2)
    monkeypatch.setattr(report, "SPREAD", 3)
    loaded = report._load(ds, thumbnails=0)
    assert loaded.samples == N_SAMPLES and len(loaded.spread) == 3
    assert loaded.rejects_by_reason == {"out_of_bounds": 3, "empty_label": 2,
                                        "image_not_found": 1}
    assert loaded.rejects == REJECTS[:2]
    first = write_report(ds, tmp_path / "a.html").read_text()
    assert "first 2 of 6 rejects" in first
    assert f"(a random 3 of the {N_SAMPLES} samples)" in first
    assert write_report(ds, tmp_path / "b.html").read_text() == first  # seeded: same page
    monkeypatch.setattr(report, "SPREAD", N_SAMPLES)
    monkeypatch.setattr(report, "LISTED", len(REJECTS))
    whole = write_report(ds, tmp_path / "c.html").read_text()
    assert "every reject" not in first and "every reject" in whole
    assert "a random" not in whole
