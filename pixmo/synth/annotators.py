"""Simulated pointing annotators: click logs with Gaussian position noise, now
and then a missed object or a duplicate click, one or two annotators per label,
"not present" labels with no points, in the units and frame the raw contract
allows (clicks refer to the stored, not yet EXIF-rotated, pixels).
"""

from __future__ import annotations

import json

import numpy as np

from pixmo.points.annotations import orient_point
from pixmo.synth.config import SynthConfig
from pixmo.synth.scenes import Scene, SceneConfig

# the orientation whose map undoes an orientation's: the quarter turns undo each
# other, every other orientation undoes itself
_INVERSE = {6: 8, 8: 6}


def stored_point(x: float, y: float, orientation: int | None) -> tuple[float, float]:
    """Percent of the displayed image to percent of the stored one: the inverse
    of ``pixmo.points.annotations.orient_point``."""
    tag = orientation or 1
    return orient_point(x, y, _INVERSE.get(tag, tag))


def _clicks(rng: np.random.Generator, scene: Scene, label: str,
             cfg: SynthConfig) -> list[tuple[float, float]]:
    """One annotator's clicks on every instance of ``label``, in displayed pixels."""
    objs = scene.groups()[label]
    kept = [o for o in objs if rng.random() >= cfg.miss_rate] or objs[:1]
    out = []
    for o in kept:
        x = float(np.clip(o.x + rng.normal(0, cfg.click_sigma * o.radius), 0, scene.width - 0.01))
        y = float(np.clip(o.y + rng.normal(0, cfg.click_sigma * o.radius), 0,
                          scene.height - 0.01))
        out.append((x, y))
        if rng.random() < cfg.duplicate_rate:  # a double click, a pixel or so away
            out.append((float(np.clip(x + rng.normal(0, 0.7), 0, scene.width - 0.01)),
                           float(np.clip(y + rng.normal(0, 0.7), 0, scene.height - 0.01))))
    order = rng.permutation(len(out))
    return [out[int(i)] for i in order]


def _in_units(points: list[tuple[float, float]], scene: Scene, orientation: int | None,
               units: str) -> list[dict[str, float]]:
    """Displayed pixels to the record's units of the stored image."""
    stored_w, stored_h = ((scene.height, scene.width) if orientation in (6, 8)
                          else (scene.width, scene.height))
    out = []
    for x, y in points:
        sx, sy = stored_point(x / scene.width * 100, y / scene.height * 100, orientation)
        if units == "pixels":
            out.append({"x": round(sx / 100 * stored_w, 2), "y": round(sy / 100 * stored_h, 2)})
        elif units == "normalized":
            out.append({"x": round(sx / 100, 5), "y": round(sy / 100, 5)})
        else:
            out.append({"x": round(sx, 3), "y": round(sy, 3)})
    return out


def _absent_label(rng: np.random.Generator, scene: Scene, cfg: SceneConfig) -> str:
    present = set(scene.groups())
    while True:
        label = f"{rng.choice(cfg.colours)} {rng.choice(cfg.shapes)}"
        if label not in present:
            return label


def annotate(rng: np.random.Generator, scene: Scene, image: str, orientation: int | None,
             digest: str, index: int, cfg: SynthConfig) -> tuple[list[str], list[str]]:
    """Every label of one image clicked by one or two annotators, and now and then a
    label that is not there: the ``points.jsonl`` lines and the absent labels."""
    lines: list[str] = []
    labels = list(scene.groups())
    absent = [_absent_label(rng, scene, cfg.scene)] if rng.random() < cfg.absent_label_share else []
    for label in [*labels, *absent]:
        method = "counting" if label == scene.counting_label else "pointing"
        annotators = 2 if rng.random() < cfg.two_annotator_share else 1
        clickers = rng.choice(np.arange(1, 21), size=annotators, replace=False)
        for clicker in clickers:
            units = str(rng.choice(["pixels", "percent", "normalized"]))
            points = _clicks(rng, scene, label, cfg) if label in labels else []
            record = {"image": image, "label": label,
                      "points": _in_units(points, scene, orientation, units), "units": units,
                      "annotator": f"p{int(clicker):02d}", "collection_method": method,
                      "annotation_id": f"p-{index:05d}-{len(lines)}"}
            if rng.random() < 0.3:
                record["image_sha256"] = digest
            lines.append(json.dumps(record))
    return lines, absent
