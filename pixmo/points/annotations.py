"""Pointing annotations: raw clicks to validated, merged label sets.

An annotator clicks every instance of something they describe in an image; an empty list
of clicks means "not present". This module reads those records (``points.jsonl`` or
parquet, see DESIGN.md), validates them with a reason for every rejection or repair,
brings coordinates into the toolkit's convention (percent 0-100 of the displayed,
EXIF-rotated image, x then y), optionally merges several annotators of one label into a
consensus set (Molmo's point text is ``pixmo.points.text``).

Stages are plain functions: ``validate_points(raw, image, cfg)`` returns a
``PointAnnotation`` or a ``Reject``; ``merge_annotations(annotations, cfg)`` turns one
image's annotations into ``PointSet`` values (the sample's ``points`` entries). Repairs
(clamped points, merged duplicate clicks) are counted in the results, never silent.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pixmo.config import at_least, check_fields, finite, one_of
from pixmo.points.metrics import match_points
from pixmo.points.text import Point
from pixmo.raw import RawRecord, read_records
from pixmo.rejects import Reason, Reject
from pixmo.schema import check

READ_STAGE = "read_points"
VALIDATE_STAGE = "validate_points"

# EXIF orientation -> (swap the axes, then mirror x, mirror y)
_EXIF_MAPS = {1: (False, False, False), 2: (False, True, False), 3: (False, True, True),
              4: (False, False, True), 5: (True, False, False), 6: (True, True, False),
              7: (True, True, True), 8: (True, False, True)}


@dataclass(frozen=True)
class PointsConfig:
    """How strictly point annotations are checked and how annotators are merged.

    Distances are relative so one setting fits images of any size: the clamp tolerance is
    in percent of width (for x) and height (for y); the duplicate radius and the merge
    threshold are in percent of the image diagonal.
    """

    max_points: int | None = 40  # Molmo dropped examples with more points; None: no limit
    clamp_tolerance: float = 1.0  # points this far outside the image are clamped, not rejected
    duplicate_radius: float = 1.0  # clicks of one annotator closer than this are one click
    merge_annotators: bool = True  # merge several annotators of one (image, label)
    merge_threshold: float = 5.0  # clicks of two annotators closer than this agree
    # raw coordinates refer to the stored pixels (DESIGN.md); False for annotations made on
    # the displayed image, which need no EXIF rotation
    coords_before_exif: bool = True

    def __post_init__(self) -> None:
        check_fields(self, max_points=at_least(1), clamp_tolerance=finite(at_least(0)),
                     duplicate_radius=finite(at_least(0)), merge_threshold=finite(at_least(0)))


@dataclass(frozen=True)
class ImageInfo:
    """What the point stage needs to know about an image, without decoding it.

    ``width`` and ``height`` are of the stored pixels, before EXIF rotation;
    ``orientation`` is the EXIF orientation tag (1 = as stored).
    """

    width: int
    height: int
    orientation: int = 1

    def __post_init__(self) -> None:
        check_fields(self, width=at_least(1), height=at_least(1),
                     orientation=one_of(tuple(_EXIF_MAPS)))

    @property
    def displayed_size(self) -> tuple[int, int]:
        """(width, height) after EXIF rotation: orientations 5-8 swap the axes."""
        if self.orientation >= 5:
            return self.height, self.width
        return self.width, self.height


@dataclass(frozen=True)
class PointAnnotation:
    """One annotator's validated clicks for one label, in percent of the displayed image."""

    image: str
    label: str
    points: tuple[Point, ...]
    annotator: str
    collection_method: str
    width: int  # displayed size, to measure distances in pixels
    height: int
    source: str
    record: str
    clamped: int = 0  # points moved onto the image border
    duplicates_merged: int = 0  # clicks folded into a nearby click of the same annotator


@dataclass(frozen=True)
class PointSet:
    """One label of one image after merging: an entry of the sample's ``points`` list."""

    label: str
    points: tuple[Point, ...]
    collection_method: str
    annotators: tuple[str, ...]
    sources: tuple[tuple[str, str], ...]  # (file, record) of every annotation merged in
    agreement: float | None = None  # share of clicks matched across annotators
    clamped: int = 0
    duplicates_merged: int = 0

    @property
    def count(self) -> int:
        return len(self.points)

    def to_json(self) -> dict[str, Any]:
        """The ``point_set`` of ``schemas/sample.json``."""
        out: dict[str, Any] = {
            "label": self.label,
            "points": [[x, y] for x, y in self.points],
            "count": self.count,
            "collection_method": self.collection_method,
            "annotators": list(self.annotators),
        }
        if self.agreement is not None:
            out["agreement"] = self.agreement
        return out


# ---------------------------------------------------------------- reading


def read_point_annotations(path: str | Path) -> Iterator[RawRecord | Reject]:
    """Every record of a ``.jsonl`` or ``.parquet`` points file, in order."""
    return read_records(path, READ_STAGE)


# ---------------------------------------------------------------- orientation


def orient_point(x: float, y: float, orientation: int) -> Point:
    """Map a point in percent of the stored image to percent of the displayed image.

    The same map PIL's ``ImageOps.exif_transpose`` applies to pixels: 2 mirrors
    left-right, 3 turns 180 degrees, 4 mirrors top-bottom, 5 transposes, 6 turns 90
    degrees clockwise, 7 transverses, 8 turns 90 degrees counter-clockwise.
    """
    if orientation not in _EXIF_MAPS:
        raise ValueError(f"EXIF orientation must be 1-8, got {orientation}")
    swap, mirror_x, mirror_y = _EXIF_MAPS[orientation]
    if swap:
        x, y = y, x
    return (100.0 - x if mirror_x else x), (100.0 - y if mirror_y else y)


# ---------------------------------------------------------------- validation

def _reject(raw: RawRecord, reason: Reason, detail: str) -> Reject:
    return Reject(VALIDATE_STAGE, reason, detail, raw.source, raw.record)


def _schema_reject(raw: RawRecord) -> Reject | None:
    violation = check("point_annotation", raw.data)
    if violation is None:
        return None
    if violation.field == "units":
        reason = Reason.UNKNOWN_UNITS
    elif violation.field == "label" and raw.data.get("label") == "":
        reason = Reason.EMPTY_LABEL
    else:
        reason = Reason.INVALID_RECORD
    detail = f"{violation.field}: {violation.message}" if violation.field else violation.message
    return _reject(raw, reason, detail)


def _dedup(points: np.ndarray, radius: float) -> np.ndarray:
    """Fold clicks closer than ``radius`` (chains included) into their mean, in click order."""
    n = len(points)
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    close = np.linalg.norm(points[:, None] - points[None, :], axis=-1) <= radius
    for i, j in zip(*np.nonzero(np.triu(close, k=1)), strict=True):
        parent[root(int(j))] = root(int(i))
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(root(i), []).append(i)
    return np.array([points[g].mean(axis=0) for g in groups.values()]).reshape(-1, 2)


def _coordinates(raw: RawRecord) -> np.ndarray | Reject:
    """The record's clicks as an (n, 2) float array, or a reject for a non-finite one."""
    try:
        xy = np.array([[p["x"], p["y"]] for p in raw.data["points"]], dtype=np.float64)
    except OverflowError:  # a JSON integer beyond float range
        return _reject(raw, Reason.NON_FINITE_COORDINATE, "a coordinate does not fit a float")
    xy = xy.reshape(-1, 2)
    bad = np.nonzero(~np.isfinite(xy).all(axis=1))[0]
    if len(bad):
        i = int(bad[0])
        return _reject(raw, Reason.NON_FINITE_COORDINATE, f"points[{i}] = ({xy[i, 0]}, {xy[i, 1]})")
    return xy


def _in_percent(raw: RawRecord, xy: np.ndarray, image: ImageInfo,
                cfg: PointsConfig) -> tuple[np.ndarray, int] | Reject:
    """Clicks in percent of the frame they were made on, clamped onto it, and how many
    were clamped; a reject for a click further out than ``clamp_tolerance``."""
    units = raw.data["units"]
    # pixel coordinates are of the stored image unless annotated on the displayed one
    frame_w, frame_h = (image.width, image.height) if cfg.coords_before_exif else (
        image.displayed_size)
    scale = {"pixels": (100.0 / frame_w, 100.0 / frame_h), "percent": (1.0, 1.0),
             "normalized": (100.0, 100.0)}[units]
    pct = xy * np.array(scale)
    tol = cfg.clamp_tolerance
    outside = ((pct < -tol) | (pct > 100.0 + tol)).any(axis=1)
    if outside.any():
        i = int(np.nonzero(outside)[0][0])
        return _reject(raw, Reason.OUT_OF_BOUNDS,
                       f"points[{i}] = ({xy[i, 0]}, {xy[i, 1]}) {units} is outside the "
                       f"{frame_w}x{frame_h} image by more than {tol}%")
    clamped = int(((pct < 0) | (pct > 100)).any(axis=1).sum())
    return np.clip(pct, 0.0, 100.0), clamped


def _fold_duplicates(pct: np.ndarray, width: int, height: int, cfg: PointsConfig) -> np.ndarray:
    """Clicks on the displayed image with those within ``duplicate_radius`` folded."""
    if cfg.duplicate_radius <= 0 or len(pct) <= 1:
        return pct
    pixels = pct * np.array([width, height]) / 100.0
    radius = cfg.duplicate_radius / 100.0 * math.hypot(width, height)
    return _dedup(pixels, radius) * 100.0 / np.array([width, height])


def validate_points(
    raw: RawRecord, image: ImageInfo | None, cfg: PointsConfig
) -> PointAnnotation | Reject:
    """Check one raw annotation and bring its points to percent of the displayed image.

    Pixel coordinates are continuous: pixel (i, j) covers [i, i + 1) x [j, j + 1), so its
    centre is (i + 0.5, j + 0.5) and the right edge of the image is x = width.
    ``image`` is None when the image the record names cannot be found. Rejects carry the
    reason; small repairs (clamping within ``clamp_tolerance``, folding duplicate clicks
    within ``duplicate_radius``) are counted on the result.
    """
    schema_reject = _schema_reject(raw)
    if schema_reject is not None:
        return schema_reject
    data = raw.data
    label = " ".join(data["label"].split())
    if not label:
        return _reject(raw, Reason.EMPTY_LABEL, "label: is blank")
    if image is None:
        return _reject(raw, Reason.IMAGE_NOT_FOUND, f"image {data['image']!r} not found")
    xy = _coordinates(raw)
    if isinstance(xy, Reject):
        return xy
    framed = _in_percent(raw, xy, image, cfg)
    if isinstance(framed, Reject):
        return framed
    pct, clamped = framed
    if cfg.coords_before_exif:
        pct = np.array([orient_point(x, y, image.orientation) for x, y in pct]).reshape(-1, 2)
    width, height = image.displayed_size
    pct = _fold_duplicates(pct, width, height, cfg)
    merged = len(xy) - len(pct)
    if cfg.max_points is not None and len(pct) > cfg.max_points:
        return _reject(raw, Reason.TOO_MANY_POINTS,
                       f"{len(pct)} points (after merging {merged} duplicates) > "
                       f"max_points {cfg.max_points}")
    return PointAnnotation(
        image=data["image"], label=label, points=tuple((float(x), float(y)) for x, y in pct),
        annotator=data["annotator"], collection_method=data.get("collection_method", "pointing"),
        width=width, height=height, source=raw.source, record=raw.record, clamped=clamped,
        duplicates_merged=merged)


# ---------------------------------------------------------------- merging annotators


def label_key(label: str) -> str:
    """Labels that name the same thing up to case and spacing are one label."""
    return " ".join(label.split()).casefold()


@dataclass
class _Cluster:
    members: list[np.ndarray] = field(default_factory=list)

    @property
    def centre(self) -> np.ndarray:
        return np.mean(self.members, axis=0)


def _consensus(group: list[PointAnnotation], cfg: PointsConfig) -> PointSet:
    """Match every annotator's clicks to clusters built so far (Hungarian, within the
    threshold); keep clusters clicked by a strict majority, at their mean position."""
    width, height = group[0].width, group[0].height
    scale = np.array([width, height], dtype=np.float64) / 100.0
    threshold = cfg.merge_threshold / 100.0 * math.hypot(width, height)
    clusters: list[_Cluster] = []
    for ann in group:
        pixels = np.array(ann.points, dtype=np.float64).reshape(-1, 2) * scale
        centres = np.array([c.centre for c in clusters]).reshape(-1, 2)
        matched = dict(match_points(pixels, centres, threshold))
        for i, point in enumerate(pixels):
            if i in matched:
                clusters[matched[i]].members.append(point)
            else:
                clusters.append(_Cluster([point]))
    needed = len(group) // 2 + 1
    kept = [c for c in clusters if len(c.members) >= needed]
    total = sum(len(ann.points) for ann in group)
    agreement = sum(len(c.members) for c in kept) / total if total else 1.0
    points = tuple((float(x), float(y)) for x, y in (c.centre / scale for c in kept))
    return _point_set(group, points, agreement)


def _point_set(
    group: list[PointAnnotation], points: tuple[Point, ...], agreement: float | None
) -> PointSet:
    methods = {ann.collection_method for ann in group}
    return PointSet(
        label=group[0].label,
        points=points,
        collection_method="counting" if "counting" in methods else "pointing",
        annotators=tuple(sorted({ann.annotator for ann in group})),
        sources=tuple((ann.source, ann.record) for ann in group),
        agreement=agreement,
        clamped=sum(ann.clamped for ann in group),
        duplicates_merged=sum(ann.duplicates_merged for ann in group),
    )


def merge_annotations(
    annotations: Sequence[PointAnnotation], cfg: PointsConfig
) -> list[PointSet]:
    """Turn the validated annotations of one image into its ``points`` entries.

    Annotations of the same label (up to case and spacing) are merged into one consensus
    set when ``cfg.merge_annotators`` (a click survives when a strict majority of the
    annotators clicked within ``merge_threshold`` of it; ``agreement`` is the share of all
    clicks that survived); otherwise each annotation is its own set. The order of the
    result and of the merge does not depend on the input order.
    """
    ordered = sorted(annotations, key=lambda a: (label_key(a.label), a.annotator, a.source,
                                                 int(a.record) if a.record.isdigit() else 0,
                                                 a.record))
    groups: dict[str, list[PointAnnotation]] = {}
    for ann in ordered:
        groups.setdefault(label_key(ann.label), []).append(ann)
    out = []
    for group in groups.values():
        if len({(a.width, a.height) for a in group}) > 1:
            raise ValueError(f"annotations of label {group[0].label!r} disagree on the image "
                             "size; merge annotations of one image at a time")
        if cfg.merge_annotators and len(group) > 1:
            out.append(_consensus(group, cfg))
        else:
            out.extend(_point_set([ann], ann.points, None) for ann in group)
    return out
