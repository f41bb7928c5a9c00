"""Point annotations: reading, validation reasons, EXIF orientation, merging."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageOps

from pixmo.errors import PixmoError
from pixmo.points.annotations import (
    ImageInfo,
    PointAnnotation,
    PointsConfig,
    RawRecord,
    label_key,
    merge_annotations,
    orient_point,
    read_point_annotations,
    validate_points,
)
from pixmo.rejects import Reason, Reject
from pixmo.schema import check

CFG = PointsConfig()


def same_points(a, b) -> bool:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return a.shape == b.shape and np.allclose(a, b, rtol=0, atol=1e-6)
IMG = ImageInfo(width=200, height=100)


def raw(**overrides) -> RawRecord:
    data = {
        "image": "images/0001.jpg",
        "label": "Red Circle",
        "points": [{"x": 20.0, "y": 10.0}, {"x": 150.0, "y": 80.0}],
        "units": "pixels",
        "annotator": "a3",
        "collection_method": "pointing",
    }
    data.update(overrides)
    return RawRecord("points.jsonl", "7", data)


# ---------------------------------------------------------------- reading


def test_read_jsonl_numbers_lines_and_rejects_bad_json(tmp_path):
    path = tmp_path / "points.jsonl"
    good = raw().data
    path.write_text(json.dumps(good) + "\n\n{not json\n[1, 2]\n"
                    + '{"image": "a.jpg", "points": [{"x": NaN, "y": 1}]}\n')
    out = list(read_point_annotations(path))
    assert [type(r) for r in out] == [RawRecord, Reject, Reject, RawRecord]
    assert out[0].record == "1" and out[0].data == good and out[0].source == str(path)
    assert (out[1].reason, out[1].record, out[1].stage) == (Reason.INVALID_RECORD, "3",
                                                           "read_points")
    assert out[1].detail.startswith("not JSON")
    assert out[2].detail == "expected a JSON object, got list" and out[2].record == "4"
    assert math.isnan(out[3].data["points"][0]["x"])  # NaN reaches validation, which names it


def test_read_parquet_drops_null_optionals_and_accepts_struct_of_lists(tmp_path):
    path = tmp_path / "points.parquet"
    table = pa.table({
        "image": ["a.jpg", "b.jpg"],
        "image_sha256": [None, "0" * 64],
        "label": ["cat", "dog"],
        "points": [[{"x": 1.0, "y": 2.0}], []],
        "units": ["percent", "normalized"],
        "annotator": ["a1", "a2"],
        "annotation_id": [None, "id-2"],
    })
    pq.write_table(table, path)
    out = list(read_point_annotations(path))
    assert [r.record for r in out] == ["1", "2"]
    assert out[0].data == {"image": "a.jpg", "label": "cat", "points": [{"x": 1.0, "y": 2.0}],
                           "units": "percent", "annotator": "a1"}
    assert check("point_annotation", out[0].data) is None
    assert out[1].data["annotation_id"] == "id-2" and out[1].data["points"] == []

    hf = tmp_path / "hf.parquet"
    pq.write_table(pa.table({"image": ["c.jpg"], "label": ["x"], "units": ["pixels"],
                             "annotator": ["a"],
                             "points": [{"x": [1.0, 3.0], "y": [2.0, 4.0]}]}), hf)
    (row,) = read_point_annotations(hf)
    assert row.data["points"] == [{"x": 1.0, "y": 2.0}, {"x": 3.0, "y": 4.0}]


def test_read_refuses_missing_file_and_unknown_suffix(tmp_path):
    with pytest.raises(PixmoError, match="nope.jsonl: input file not found"):
        list(read_point_annotations(tmp_path / "nope.jsonl"))
    other = tmp_path / "points.csv"
    other.write_text("x")
    with pytest.raises(PixmoError, match=r"points\.csv: expected a \.jsonl or \.parquet file"):
        list(read_point_annotations(other))


# ---------------------------------------------------------------- validation


def test_valid_pixels_become_percent_of_displayed_image():
    ann = validate_points(raw(), IMG, CFG)
    assert isinstance(ann, PointAnnotation)
    assert ann.points == ((10.0, 10.0), (75.0, 80.0))
    assert (ann.label, ann.annotator, ann.collection_method) == ("Red Circle", "a3", "pointing")
    assert (ann.width, ann.height, ann.clamped, ann.duplicates_merged) == (200, 100, 0, 0)
    assert (ann.source, ann.record) == ("points.jsonl", "7")


@pytest.mark.parametrize("units,xy", [("percent", (10.0, 10.0)), ("normalized", (0.1, 0.1))])
def test_percent_and_normalized_units(units, xy):
    ann = validate_points(raw(units=units, points=[{"x": xy[0], "y": xy[1]}]), IMG, CFG)
    assert same_points(ann.points, ((10.0, 10.0),))


def test_not_present_has_no_points():
    ann = validate_points(raw(points=[]), IMG, CFG)
    assert ann.points == ()


@pytest.mark.parametrize("overrides,reason,detail", [
    ({"units": "inches"}, Reason.UNKNOWN_UNITS, "units: "),
    ({"units": 3}, Reason.UNKNOWN_UNITS, "units: "),
    ({"label": ""}, Reason.EMPTY_LABEL, "label: "),
    ({"label": "  \t "}, Reason.EMPTY_LABEL, "label: is blank"),
    ({"label": 5}, Reason.INVALID_RECORD, "label: "),
    ({"points": [{"x": 1}]}, Reason.INVALID_RECORD, "points[0]: "),
    ({"annotator": None}, Reason.INVALID_RECORD, "annotator: "),
    ({"extra": 1}, Reason.INVALID_RECORD, ""),
    ({"points": [{"x": 1.0, "y": 2.0}, {"x": float("nan"), "y": 2.0}]},
     Reason.NON_FINITE_COORDINATE, "points[1] = (nan, 2.0)"),
    ({"points": [{"x": float("inf"), "y": 2.0}]}, Reason.NON_FINITE_COORDINATE,
     "points[0] = (inf, 2.0)"),
    ({"points": [{"x": 10**400, "y": 2.0}]}, Reason.NON_FINITE_COORDINATE,
     "a coordinate does not fit a float"),
    ({"points": [{"x": 205.0, "y": 2.0}]}, Reason.OUT_OF_BOUNDS,
     "points[0] = (205.0, 2.0) pixels is outside the 200x100 image by more than 1.0%"),
    ({"points": [{"x": 5.0, "y": -1.5}]}, Reason.OUT_OF_BOUNDS, "points[0] = (5.0, -1.5)"),
])
def test_every_reject_reason(overrides, reason, detail):
    out = validate_points(raw(**overrides), IMG, CFG)
    assert isinstance(out, Reject)
    assert (out.reason, out.stage, out.source, out.record) == (
        reason, "validate_points", "points.jsonl", "7")
    assert out.detail.startswith(detail), out.detail


def test_missing_image_is_rejected():
    out = validate_points(raw(), None, CFG)
    assert out.reason is Reason.IMAGE_NOT_FOUND
    assert out.detail == "image 'images/0001.jpg' not found"


def test_small_overshoot_is_clamped_and_counted():
    # 201 px is 0.5% past the right edge, -0.5 px 0.5% above the top: within 1% tolerance
    ann = validate_points(raw(points=[{"x": 201.0, "y": 50.0}, {"x": 100.0, "y": -0.5},
                                      {"x": 200.0, "y": 100.0}]), IMG, CFG)
    assert ann.points == ((100.0, 50.0), (50.0, 0.0), (100.0, 100.0))
    assert ann.clamped == 2
    strict = validate_points(raw(points=[{"x": 201.0, "y": 50.0}]), IMG,
                             PointsConfig(clamp_tolerance=0.0))
    assert strict.reason is Reason.OUT_OF_BOUNDS


def test_duplicate_clicks_are_merged_and_counted():
    # 200x100 image: diagonal 223.6 px, radius 1% = 2.24 px. (10,10) and (11,11) are 1.41 px
    # apart, (12.5,10) is 1.80 px from (11,11): one chain of three -> their mean
    # (11.1667, 10.3333) px = (5.5833, 10.3333) %.
    pts = [{"x": 10.0, "y": 10.0}, {"x": 100.0, "y": 50.0}, {"x": 11.0, "y": 11.0},
           {"x": 12.5, "y": 10.0}, {"x": 110.0, "y": 50.0}]
    ann = validate_points(raw(points=pts), IMG, CFG)
    assert ann.duplicates_merged == 2
    assert same_points(ann.points, ((5.5833333, 10.3333333), (50.0, 50.0), (55.0, 50.0)))
    off = validate_points(raw(points=pts), IMG, PointsConfig(duplicate_radius=0.0))
    assert len(off.points) == 5 and off.duplicates_merged == 0


def test_too_many_points_after_duplicates():
    pts = [{"x": float(4 * i), "y": 50.0} for i in range(41)]
    out = validate_points(raw(points=pts), IMG, CFG)
    assert out.reason is Reason.TOO_MANY_POINTS
    assert out.detail == "41 points (after merging 0 duplicates) > max_points 40"
    assert len(validate_points(raw(points=pts[:40]), IMG, CFG).points) == 40
    # 42 clicks, two of them duplicates of others: 40 points remain, which is allowed
    dups = pts[:40] + [{"x": 0.5, "y": 50.0}, {"x": 4.5, "y": 50.0}]
    ann = validate_points(raw(points=dups), IMG, CFG)
    assert (len(ann.points), ann.duplicates_merged) == (40, 2)
    assert len(validate_points(raw(points=pts), IMG, PointsConfig(max_points=None)).points) == 41


def test_config_and_image_info_check_their_fields():
    with pytest.raises(ValueError, match="max_points must be >= 1"):
        PointsConfig(max_points=0)
    for bad in ("nan", "inf"):
        with pytest.raises(ValueError, match=f"merge_threshold must be a finite number >= 0, "
                                             f"got {bad}"):
            PointsConfig(merge_threshold=float(bad))
    with pytest.raises(ValueError, match=r"ImageInfo.orientation must be one of \(1, .*8\), got 9"):
        ImageInfo(10, 10, 9)
    with pytest.raises(ValueError, match="ImageInfo.width must be >= 1, got 0"):
        ImageInfo(0, 10)


# ---------------------------------------------------------------- EXIF orientation


def _marked_image(width: int, height: int, marks: list[tuple[int, int]], orientation: int,
                  fmt: str) -> bytes:
    img = Image.new("RGB", (width, height), (0, 0, 0))
    for k, (x, y) in enumerate(marks):
        img.putpixel((x, y), (255, 10 * k, 0))
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    img.save(buf, format=fmt, exif=exif.tobytes())
    return buf.getvalue()


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("units", ["pixels", "percent", "normalized"])
def test_exif_rotation_keeps_points_on_marked_pixels(orientation, units):
    width, height = 7, 4
    marks = [(0, 0), (6, 0), (0, 3), (6, 3), (2, 1), (5, 2)]
    data = _marked_image(width, height, marks, orientation, "PNG")
    stored = Image.open(io.BytesIO(data))
    assert stored.getexif()[0x0112] == orientation and stored.size == (width, height)
    shown = ImageOps.exif_transpose(stored)
    scale = {"pixels": (1.0, 1.0), "percent": (100 / width, 100 / height),
             "normalized": (1 / width, 1 / height)}[units]
    points = [{"x": (x + 0.5) * scale[0], "y": (y + 0.5) * scale[1]} for x, y in marks]
    ann = validate_points(raw(points=points, units=units),
                          ImageInfo(width, height, orientation), CFG)
    assert (ann.width, ann.height) == shown.size
    for k, (px, py) in enumerate(ann.points):
        col, row = math.floor(px / 100 * ann.width), math.floor(py / 100 * ann.height)
        assert shown.getpixel((col, row)) == (255, 10 * k, 0), (k, orientation)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_rotation_on_a_jpeg(orientation):
    # JPEG is lossy: mark an 8x8 block aligned to the JPEG grid and check its centre
    img = Image.new("L", (48, 32), 0)
    img.paste(255, (8, 16, 16, 24))
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95, exif=exif.tobytes())
    shown = ImageOps.exif_transpose(Image.open(io.BytesIO(buf.getvalue())))
    ann = validate_points(raw(points=[{"x": 12.0, "y": 20.0}]), ImageInfo(48, 32, orientation),
                          CFG)
    (px, py), = ann.points
    w, h = shown.size
    assert shown.getpixel((int(px / 100 * w), int(py / 100 * h))) > 200
    assert shown.getpixel((int((100 - px) / 100 * w), int((100 - py) / 100 * h))) < 50


def test_coords_on_displayed_image_are_not_rotated():
    cfg = PointsConfig(coords_before_exif=False)
    ann = validate_points(raw(points=[{"x": 10.0, "y": 150.0}]), ImageInfo(200, 100, 6), cfg)
    # displayed image is 100x200; the point is already in it
    assert ann.points == ((10.0, 75.0),) and (ann.width, ann.height) == (100, 200)


def test_orient_point_refuses_unknown_tag():
    with pytest.raises(ValueError, match="1-8, got 0"):
        orient_point(1, 2, 0)


# ---------------------------------------------------------------- merging annotators


def ann(annotator: str, points, label="cat", record="1", method="pointing", size=(200, 100)):
    return PointAnnotation(image="i.jpg", label=label, points=tuple(points), annotator=annotator,
                           collection_method=method, width=size[0], height=size[1],
                           source="points.jsonl", record=record)


def test_single_annotator_is_kept_as_is():
    (ps,) = merge_annotations([ann("a1", [(10.0, 20.0)])], CFG)
    assert ps.to_json() == {"label": "cat", "points": [[10.0, 20.0]], "count": 1,
                            "collection_method": "pointing", "annotators": ["a1"]}


def test_two_annotators_keep_matched_points_only():
    # 200x100: threshold 5% of diagonal = 11.18 px = 5.59% of the width
    a = ann("a1", [(10.0, 20.0), (50.0, 50.0), (90.0, 90.0)], record="1")
    b = ann("a2", [(12.0, 20.0), (50.0, 54.0)], record="2")
    (ps,) = merge_annotations([b, a], CFG)
    assert same_points(ps.points, ((11.0, 20.0), (50.0, 52.0)))
    assert ps.agreement == pytest.approx(4 / 5)
    assert ps.annotators == ("a1", "a2") and ps.count == 2
    assert ps.sources == (("points.jsonl", "1"), ("points.jsonl", "2"))
    doc = ps.to_json()
    assert doc["agreement"] == pytest.approx(0.8)
    assert set(doc) == {"label", "points", "count", "collection_method", "annotators",
                        "agreement"}


def test_three_annotators_majority_and_case_insensitive_labels():
    a = ann("a1", [(10.0, 10.0), (80.0, 80.0)], label="Cat")
    b = ann("a2", [(11.0, 10.0)], label="cat ")
    c = ann("a3", [(30.0, 30.0), (79.0, 80.0)], label="CAT", method="counting")
    (ps,) = merge_annotations([a, b, c], CFG)
    # (10,10)+(11,10) and (80,80)+(79,80) have 2 of 3 votes; (30,30) has one
    assert same_points(sorted(ps.points), [(10.5, 10.0), (79.5, 80.0)])
    assert ps.agreement == pytest.approx(4 / 5)
    assert ps.collection_method == "counting"
    assert ps.label == "Cat"  # the first annotator's spelling


def test_not_present_agreement_and_disagreement():
    (both_empty,) = merge_annotations([ann("a1", []), ann("a2", [])], CFG)
    assert both_empty.points == () and both_empty.agreement == 1.0
    (split,) = merge_annotations([ann("a1", []), ann("a2", [(5.0, 5.0)])], CFG)
    assert split.points == () and split.agreement == 0.0


def test_merge_is_order_independent_and_optional():
    anns = [ann("a2", [(50.0, 52.0), (20.0, 20.0)], record="2"),
            ann("a1", [(50.0, 50.0)], record="1"),
            ann("a1", [(70.0, 70.0)], label="dog", record="3")]
    first = merge_annotations(anns, CFG)
    assert first == merge_annotations(anns[::-1], CFG)
    assert [p.label for p in first] == ["cat", "dog"]
    separate = merge_annotations(anns, PointsConfig(merge_annotators=False))
    assert [(p.label, p.annotators, p.agreement) for p in separate] == [
        ("cat", ("a1",), None), ("cat", ("a2",), None), ("dog", ("a1",), None)]


def test_merge_refuses_mixed_image_sizes():
    with pytest.raises(ValueError, match="disagree on the image size"):
        merge_annotations([ann("a1", [], size=(10, 10)), ann("a2", [], size=(20, 10))], CFG)


def test_label_key():
    assert label_key("  Red   Circle ") == label_key("red circle") == "red circle"


def test_merged_point_sets_fit_the_sample_schema():
    sets = merge_annotations([ann("a1", [(0.0, 100.0)]), ann("a2", [(0.5, 99.5)])], CFG)
    sample = {"schema_version": 1, "key": "k", "image": {"sha256": "0" * 64, "width": 200,
              "height": 100, "format": "png", "source": "i.png"}, "transcripts": [],
              "captions": [], "points": [s.to_json() for s in sets], "qa": [],
              "sources": [{"file": "points.jsonl", "record": "1"}]}
    assert check("sample", sample) is None


def test_file_to_sample_point_sets(tmp_path):
    """points.jsonl on disk -> read -> validate (image found or not) -> merge -> schema."""
    lines = [
        {"image": "images/a.png", "label": "cup", "points": [{"x": 10, "y": 10}],
         "units": "pixels", "annotator": "a1"},
        {"image": "images/a.png", "label": "Cup", "points": [{"x": 11, "y": 10}],
         "units": "pixels", "annotator": "a2", "collection_method": "counting"},
        {"image": "images/a.png", "label": "spoon", "points": [], "units": "percent",
         "annotator": "a1"},
        {"image": "images/missing.png", "label": "cup", "points": [], "units": "percent",
         "annotator": "a1"},
        {"image": "images/a.png", "label": "cup", "points": [], "units": "furlongs",
         "annotator": "a3"},
    ]
    path = tmp_path / "points.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    images = {"images/a.png": ImageInfo(40, 20, orientation=3)}
    results = [validate_points(r, images.get(r.data["image"]), CFG)
               for r in read_point_annotations(path)]
    rejects = [r for r in results if isinstance(r, Reject)]
    assert [(r.record, r.reason) for r in rejects] == [("4", Reason.IMAGE_NOT_FOUND),
                                                       ("5", Reason.UNKNOWN_UNITS)]
    sets = merge_annotations([r for r in results if not isinstance(r, Reject)], CFG)
    docs = [s.to_json() for s in sets]
    # orientation 3 turns (10.5, 10) px of 40x20 into 100 - (26.25, 50) percent
    assert docs == [
        {"label": "cup", "points": [[73.75, 50.0]], "count": 1,
         "collection_method": "counting", "annotators": ["a1", "a2"], "agreement": 1.0},
        {"label": "spoon", "points": [], "count": 0, "collection_method": "pointing",
         "annotators": ["a1"]},
    ]
    assert sum(len(s.sources) for s in sets) + len(rejects) == len(lines)
