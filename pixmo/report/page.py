"""One self-contained HTML page about a dataset (``pixmo report``), and about a
training run on it when one is given.

The page needs nothing but itself: images are embedded as ``data:`` URIs and
plots are inline SVG drawn here, so it can be mailed, archived or opened
offline. It shows the counts and the ledger, rejects and failures by reason,
histograms (caption length, points per label, image size), a grid of samples
with their points drawn and their caption, and, for a run: the loss curve from
``metrics.jsonl``, the numbers in ``eval/eval.json`` and predicted against
true points on held-out images from ``eval/predictions.jsonl``. Every run file
is optional (a run still training has no eval yet): a missing one is said so.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
import os
import random
import tempfile
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pixmo.atomic import atomic_write_bytes
from pixmo.dataset.format import DATASET_JSON, REJECTS
from pixmo.dataset.reader import iter_samples
from pixmo.dataset.tables import iter_rows, read_dataset_json
from pixmo.errors import PixmoError
from pixmo.report.charts import bar_chart_svg, fmt_number, histogram_svg, line_chart_svg
from pixmo.report.draw import render_points

log = logging.getLogger(__name__)

THUMB = 320  # longest side of a thumbnail, pixels
EVAL_KEYS = ("counting_accuracy", "majority_baseline_accuracy", "pointing_f1",
             "num_eval_examples")


LISTED = 1000  # rows of the "every reject" and "every failure" tables
SPREAD = 100_000  # samples whose values the histograms draw (a seeded reservoir beyond)


@dataclass
class Dataset:
    """What the report needs from a dataset directory, gathered in one pass in
    bounded memory: counts, the first ``LISTED`` rejects and failures, the
    histograms' values of up to ``SPREAD`` samples, the thumbnails."""

    description: dict[str, Any]
    rejects_by_reason: Counter[str] = field(default_factory=Counter)
    rejects: list[dict[str, str]] = field(default_factory=list)
    failures_by_reason: Counter[str] = field(default_factory=Counter)
    failures: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    # per sample: caption words (None: no caption), points per label, longest side,
    # megapixels; a seeded reservoir of SPREAD samples beyond that many
    spread: list[tuple[int | None, list[int], int | None, float | None]] = field(
        default_factory=list)
    samples: int = 0
    thumbs: list[tuple[str, bytes, dict[str, Any]]] = field(default_factory=list)

    def add(self, sample: dict[str, Any], rng: random.Random) -> None:
        for failure in sample.get("failures", ()):
            self.failures_by_reason[failure["reason"]] += 1
            if len(self.failures) < LISTED:
                self.failures.append((sample["key"], failure))
        caption = _caption_of(sample)
        image = sample.get("image")
        values = (len(caption.split()) if caption else None,
                  [len(p.get("points", [])) for p in sample.get("points", [])],
                  max(image["width"], image["height"]) if image else None,
                  image["width"] * image["height"] / 1e6 if image else None)
        self.samples += 1
        if len(self.spread) < SPREAD:
            self.spread.append(values)
        elif (slot := rng.randrange(self.samples)) < SPREAD:
            self.spread[slot] = values


def _load(dataset_dir: Path, thumbnails: int) -> Dataset:
    if not (dataset_dir / DATASET_JSON).is_file():
        raise PixmoError("not a dataset (no dataset.json)", file=str(dataset_dir))
    ds = Dataset(read_dataset_json(dataset_dir / DATASET_JSON))
    if (dataset_dir / REJECTS).is_file():
        for row in iter_rows(dataset_dir / REJECTS):
            ds.rejects_by_reason[row["reason"]] += 1
            if len(ds.rejects) < LISTED:
                ds.rejects.append(row)
    rng = random.Random(0)
    for sample in iter_samples(dataset_dir):
        ds.add(sample.json, rng)
        if len(ds.thumbs) < thumbnails and (image := sample.image()) is not None:
            ds.thumbs.append((sample.key, image, sample.json))
    return ds


def _first(listed: int, total: int, what: str) -> str:
    return f"every {what}" if listed == total else f"first {listed:,} of {total:,} {what}s"


# --------------------------------------------------------------------------- images


def _data_uri(png_or_jpeg: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(png_or_jpeg).decode('ascii')}"


def _thumbnail(image: Any) -> str:
    """A PIL image, shrunk to ``THUMB`` and embedded as JPEG."""
    image = image.convert("RGB")
    image.thumbnail((THUMB * 2, THUMB))
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=85)
    return _data_uri(buf.getvalue(), "image/jpeg")


def _drawn(image_bytes: bytes, point_sets: list[dict[str, Any]]) -> str:
    """The sample's image with its points and legend (``pixmo.report.draw``)."""
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        path = render_points(image_bytes, point_sets, Path(tmp) / "drawn.png")
        with Image.open(path) as drawn:
            return _thumbnail(drawn)


def _predicted_vs_true(image_bytes: bytes, predicted: Sequence[Sequence[float]],
                       true: Sequence[Sequence[float]]) -> str:
    """True points as green rings, predicted points as red crosses (percent x, y)."""
    from PIL import Image, ImageDraw, ImageOps

    with Image.open(io.BytesIO(image_bytes)) as opened:
        image = ImageOps.exif_transpose(opened).convert("RGB")
    image.thumbnail((THUMB * 2, THUMB))
    draw = ImageDraw.Draw(image)
    w, h = image.size
    r = max(5, round(min(w, h) / 28))
    for x, y in _xy(true):
        cx, cy = x / 100 * w, y / 100 * h
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=(0, 170, 0), width=3)
    for x, y in _xy(predicted):
        cx, cy = x / 100 * w, y / 100 * h
        draw.line((cx - r, cy - r, cx + r, cy + r), fill=(220, 0, 0), width=3)
        draw.line((cx - r, cy + r, cx + r, cy - r), fill=(220, 0, 0), width=3)
    return _thumbnail(image)


def _xy(points: Any) -> list[tuple[float, float]]:
    """Points as [[x, y], ...] or [{"x", "y"}, ...]; anything else is skipped."""
    out = []
    for p in points or []:
        if isinstance(p, dict):
            p = (p.get("x"), p.get("y"))
        if (isinstance(p, (list, tuple)) and len(p) == 2
                and all(isinstance(v, (int, float)) and math.isfinite(v) for v in p)):
            out.append((float(p[0]), float(p[1])))
    return out


# --------------------------------------------------------------------------- run files


def _jsonl(path: Path) -> tuple[list[dict[str, Any]], int]:
    """Objects of a JSON-lines file and how many lines were not objects (a run
    still writing may leave half a line)."""
    rows, bad = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(obj, dict):
            rows.append(obj)
        else:
            bad += 1
    return rows, bad


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value)


# --------------------------------------------------------------------------- HTML

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px;color:#222;
max-width:1200px}
h1{font-size:24px}h2{font-size:19px;margin-top:32px;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:left}td.n{text-align:right;font-variant-numeric:tabular-nums}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(420px,1fr));gap:16px}
.card{border:1px solid #ddd;padding:8px;display:flex;gap:10px;align-items:flex-start}
.card img{max-width:240px;height:auto;flex:none}.card p{margin:0 0 6px;font-size:13px}
.key{font-family:monospace;font-size:11px;color:#666}.plots{display:flex;flex-wrap:wrap;gap:12px}
.note{color:#666;font-style:italic}
"""


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f'<td class="n">{fmt_number(c)}</td>' if _number(c)
                         else f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
        for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _caption_of(sample: dict[str, Any]) -> str:
    captions = sample.get("captions") or []
    if captions:
        return str(captions[0].get("text", ""))
    transcripts = sample.get("transcripts") or []
    return str(transcripts[0].get("text", "")) if transcripts else ""


def _dataset_sections(ds: Dataset) -> list[str]:
    desc = ds.description
    out = ["<h2>Counts</h2>",
           _table(["what", "count"], sorted(desc.get("counts", {}).items()))]
    if desc.get("ledger"):
        out.append("<h3>Ledger (records read = accepted + rejected)</h3>")
        out.append(_table(["file", "read", "accepted", "rejected"],
                          [[e["file"], e["read"], e["accepted"], e["rejected"]]
                           for e in desc["ledger"]]))
    reasons = sorted(ds.rejects_by_reason.items(), key=lambda kv: (-kv[1], kv[0]))
    out.append("<h2>Rejects by reason</h2>")
    out.append(_table(["reason", "records"], reasons))
    out.append(bar_chart_svg(reasons, "rejected records by reason"))
    if ds.rejects:
        listed = _first(len(ds.rejects), ds.rejects_by_reason.total(), "reject")
        out.append(f"<details><summary>{listed}</summary>" + _table(
            ["source", "record", "stage", "reason", "detail"],
            [[r["source"], r["record"], r["stage"], r["reason"], r["detail"]]
             for r in ds.rejects]) + "</details>")
    out.append("<h2>Failures by reason</h2><p>Samples whose records were accepted but that "
               "lack what a stage could not add (such as a caption the LLM never wrote).</p>")
    out.append(_table(["reason", "samples"], sorted(
        ds.failures_by_reason.items(), key=lambda kv: (-kv[1], kv[0]))))
    if ds.failures:
        listed = _first(len(ds.failures), ds.failures_by_reason.total(), "failure")
        out.append(f"<details><summary>{listed}</summary>" + _table(
            ["sample", "stage", "reason", "detail", "sessions"],
            [[key, f["stage"], f["reason"], f["detail"], ", ".join(f.get("session_ids", ()))]
             for key, f in ds.failures]) + "</details>")

    words = [w for w, _, _, _ in ds.spread if w is not None]
    per_label = [n for _, counts, _, _ in ds.spread for n in counts]
    sides = [side for _, _, side, _ in ds.spread if side is not None]
    pixels = [mp for _, _, _, mp in ds.spread if mp is not None]
    drawn = "" if len(ds.spread) == ds.samples else (
        f" (a random {len(ds.spread):,} of the {ds.samples:,} samples)")
    out.append(f"<h2>Distributions{drawn}</h2><div class=\"plots\">")
    out.append(histogram_svg(words, "caption length", "words per caption"))
    out.append(histogram_svg(per_label, "points per label", "points per label (0 = not "
                             "present)", integer=True))
    out.append(histogram_svg(sides, "image size", "longest side (pixels)"))
    out.append(histogram_svg(pixels, "image area", "megapixels"))
    out.append("</div>")
    return out


def _sample_grid(ds: Dataset) -> list[str]:
    out = [f"<h2>Samples ({len(ds.thumbs)} of {ds.samples})</h2><div class=\"grid\">"]
    for key, image, sample in ds.thumbs:
        point_sets = sample.get("points", [])
        legend = ", ".join(f"{p['label']} ({p.get('count', len(p.get('points', [])))})"
                           for p in point_sets)
        out.append(f'<div class="card"><img src="{_drawn(image, point_sets)}" '
                   f'alt="sample {html.escape(key)}"><div>'
                   f'<p class="key">{html.escape(key)} · {sample["image"]["width"]}×'
                   f'{sample["image"]["height"]}</p>'
                   f"<p>{html.escape(_caption_of(sample)) or '<i>no caption</i>'}</p>"
                   f"<p><b>points:</b> {html.escape(legend) or 'none'}</p></div></div>")
    out.append("</div>")
    return out


def _run_sections(run_dir: Path, eval_dataset_dir: Path | None, predictions: int) -> list[str]:
    out = [f"<h2>Training run</h2><p class=\"key\">{html.escape(str(run_dir))}</p>"]
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        rows, bad = _jsonl(metrics)
        points = sorted((r["step"], r["loss"]) for r in rows
                        if _number(r.get("step")) and _number(r.get("loss")))
        out.append(line_chart_svg([p[0] for p in points], [p[1] for p in points],
                                  "training loss", "step", "loss"))
        if points:
            out.append(f"<p>{len(points)} logged steps; last loss {fmt_number(points[-1][1])} at "
                       f"step {fmt_number(points[-1][0])}.</p>")
        if bad:
            out.append(f'<p class="note">{bad} line(s) of metrics.jsonl are not JSON objects.</p>')
    else:
        out.append('<p class="note">no metrics.jsonl yet.</p>')

    out.append("<h3>Evaluation</h3>")
    eval_json = run_dir / "eval" / "eval.json"
    if eval_json.is_file():
        try:
            numbers = json.loads(eval_json.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise PixmoError(f"not JSON: {exc.msg}", file=str(eval_json)) from exc
        keys = [k for k in EVAL_KEYS if k in numbers]
        keys += sorted(k for k, v in numbers.items() if k not in EVAL_KEYS and _number(v))
        out.append(_table(["metric", "value"], [[k, numbers[k]] for k in keys]))
    else:
        out.append('<p class="note">no eval/eval.json yet.</p>')

    pred_file = run_dir / "eval" / "predictions.jsonl"
    if not pred_file.is_file():
        out.append('<p class="note">no eval/predictions.jsonl yet.</p>')
        return out
    rows, _ = _jsonl(pred_file)
    rows = [r for r in rows if isinstance(r.get("key"), str)][:predictions]
    images: dict[str, bytes] = {}
    if eval_dataset_dir is not None:
        wanted = {r["key"] for r in rows}
        for sample in iter_samples(eval_dataset_dir):
            if sample.key in wanted:
                images[sample.key] = sample.image() or b""
    out.append('<h3>Predicted (red ×) and true (green ○) points on held-out images</h3>'
               '<div class="grid">')
    for r in rows:
        facts = (f"<p><b>{html.escape(str(r.get('label', '')))}</b></p>"
                 f"<p>predicted count {html.escape(str(r.get('predicted_count', '?')))}, "
                 f"true count {html.escape(str(r.get('true_count', '?')))}</p>"
                 f"<p class=\"key\">{html.escape(r['key'])}</p>")
        image = images.get(r["key"])
        picture = '<p class="note">image not in the eval dataset given</p>'
        if image:
            uri = _predicted_vs_true(image, r.get("predicted_points"), r.get("true_points"))
            picture = f'<img src="{uri}" alt="prediction {html.escape(r["key"])}">'
        out.append(f'<div class="card">{picture}<div>{facts}</div></div>')
    out.append("</div>")
    return out


def write_report(dataset_dir: str | os.PathLike[str], out_file: str | os.PathLike[str], *,
                 run_dir: str | os.PathLike[str] | None = None,
                 eval_dataset_dir: str | os.PathLike[str] | None = None,
                 thumbnails: int = 12, predictions: int = 12) -> Path:
    """Write the HTML report of ``dataset_dir`` (and of ``run_dir``, whose
    held-out images come from ``eval_dataset_dir``) to ``out_file``, atomically."""
    if run_dir is not None and not Path(run_dir).is_dir():
        raise PixmoError("no such training run directory", file=os.fspath(run_dir))
    dataset = Path(dataset_dir)
    ds = _load(dataset, thumbnails)
    name = ds.description.get("name", dataset.name)
    parts = [f"<h1>Dataset report: {html.escape(str(name))}</h1>",
             f"<p class=\"key\">{html.escape(str(dataset))} · format "
             f"{html.escape(str(ds.description.get('format_version', '?')))} · engine "
             f"{html.escape(str(ds.description.get('engine', '?')))}</p>"]
    parts += _dataset_sections(ds)
    parts += _sample_grid(ds)
    if run_dir is not None:
        parts += _run_sections(Path(run_dir),
                               Path(eval_dataset_dir) if eval_dataset_dir else None, predictions)
    page = ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(str(name))} report</title><style>{_CSS}</style></head>"
            f"<body>{''.join(parts)}</body></html>\n")
    out = Path(out_file)
    atomic_write_bytes(out, page.encode("utf-8"))
    log.info("wrote report of %d samples to %s", ds.samples, out)
    return out

