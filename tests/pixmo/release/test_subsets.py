"""Readers of the released PixMo subsets: real parquet written here with the
released column names and types, and each subset's row converter called on
plain rows and real decoded images."""

from __future__ import annotations

import hashlib
import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pixmo.errors import PixmoError
from pixmo.images import decode_image
from pixmo.rejects import Reject
from pixmo.release.subsets import SUBSETS, Row, get_subset, read_rows

POINT = pa.struct([("x", pa.float64()), ("y", pa.float64())])
SCHEMAS = {
    "pixmo-points": pa.schema([("image_url", pa.string()), ("image_sha256", pa.string()),
                               ("points", pa.list_(POINT)), ("count", pa.int64()),
                               ("label", pa.string()), ("collection_method", pa.string())]),
    # HF "sequence of struct": a struct of lists
    "pixmo-count": pa.schema([("image_url", pa.string()), ("image_sha256", pa.string()),
                              ("count", pa.int32()),
                              ("points", pa.struct([("x", pa.list_(pa.float32())),
                                                    ("y", pa.list_(pa.float32()))])),
                              ("label", pa.string())]),
    "pixmo-cap": pa.schema([("image_url", pa.string()), ("caption", pa.string()),
                            ("transcripts", pa.list_(pa.string()))]),
    "pixmo-ask-model-anything": pa.schema([("image_url", pa.string()),
                                           ("image_sha256", pa.string()),
                                           ("question", pa.string()), ("answer", pa.string())]),
    "pixmo-cap-qa": pa.schema([("image_url", pa.string()), ("question", pa.string()),
                               ("answer", pa.string()), ("messages", pa.list_(pa.string()))]),
    "pixmo-points-eval": pa.schema([("image_url", pa.string()), ("image_sha256", pa.string()),
                                    ("label", pa.string()), ("points", pa.list_(POINT)),
                                    ("masks", pa.list_(pa.list_(pa.list_(pa.bool_()))))]),
    "pixmo-point-explanations": pa.schema([
        ("image_url", pa.string()), ("image_sha256", pa.string()), ("question", pa.string()),
        ("response", pa.string()), ("parsed_response", pa.string()),
        ("alt_text", pa.list_(pa.string())), ("inline_text", pa.list_(pa.string())),
        ("points", pa.list_(pa.list_(POINT)))]),
    "pixmo-docs": pa.schema([("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
                             ("image_id", pa.string()),
                             ("questions", pa.list_(pa.struct([("question", pa.string()),
                                                               ("answer", pa.string())])))]),
    # vikhyatk/CountBenchQA
    "countbenchqa": pa.schema([("image", pa.struct([("bytes", pa.binary()),
                                                    ("path", pa.string())])),
                               ("text", pa.string()), ("question", pa.string()),
                               ("number", pa.int32())]),
}


def image_bytes(color: tuple[int, int, int], size: tuple[int, int] = (64, 48),
                fmt: str = "JPEG", orientation: int | None = None) -> bytes:
    image = Image.new("RGB", size, color)
    buf = io.BytesIO()
    if orientation is None:
        image.save(buf, format=fmt)
    else:
        exif = Image.Exif()
        exif[0x0112] = orientation
        image.save(buf, format=fmt, exif=exif)
    return buf.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_parquet(path, subset: str, rows: list[dict]) -> str:
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMAS[subset]), path)
    return str(path)


def test_read_rows_numbers_rows_and_rejects_unusable_ones(tmp_path):
    rows = [{"image_url": "http://h/a.jpg", "image_sha256": "A" * 64, "question": "q",
             "answer": "a"},
            {"image_url": " ", "image_sha256": "a" * 64, "question": "q", "answer": "a"}]
    parquet = write_parquet(tmp_path / "ama.parquet", "pixmo-ask-model-anything", rows)
    first, second = read_rows(SUBSETS["pixmo-ask-model-anything"], parquet)
    assert first == Row(parquet, "1", "http://h/a.jpg", "a" * 64, {"question": "q", "answer": "a"})
    assert second.reason.value == "invalid_record" and second.record == "2"


def loaded(size=(200, 100), orientation=None, fmt="JPEG"):
    data = image_bytes((10, 10, 10), size=size, fmt=fmt, orientation=orientation)
    return decode_image(data, "http://h/x.jpg")


def annotate(subset: str, data: dict, image=None):
    row = Row("f.parquet", "7", "http://h/x.jpg", None, data)
    return get_subset(subset).annotate(row, image or loaded())


def test_read_rows_reads_each_released_layout_and_hands_embedded_bytes_over(tmp_path):
    png = image_bytes((1, 2, 3), fmt="PNG")
    parquet = write_parquet(tmp_path / "docs.parquet", "pixmo-docs", [
        {"image": {"bytes": png, "path": "a.png"}, "image_id": "a",
         "questions": [{"question": "q", "answer": "a"}]}])
    handed = []
    (row,) = read_rows(SUBSETS["pixmo-docs"], parquet, embedded=lambda s, d: handed.append((s, d)))
    assert handed == [(sha(png), png)]
    assert row.image == sha(png) and row.sha256 is None
    assert row.data == {"image_id": "a", "questions": [{"question": "q", "answer": "a"}]}

    count = write_parquet(tmp_path / "count.parquet", "pixmo-count", [
        {"image_url": "http://h/c.jpg", "image_sha256": "b" * 64, "count": 2,
         "points": {"x": [1.5, 2.5], "y": [3.5, 4.5]}, "label": "cat"}])
    (row,) = read_rows(SUBSETS["pixmo-count"], count)
    assert row.data["points"] == {"x": [1.5, 2.5], "y": [3.5, 4.5]}


def test_a_missing_released_column_names_the_file_and_columns(tmp_path):
    parquet = write_parquet(tmp_path / "cap.parquet", "pixmo-cap",
                            [{"image_url": "http://h/x.jpg", "caption": "c", "transcripts": []}])
    expected = (r"cap.parquet: missing released column\(s\) "
                r"\['image_sha256', 'label', 'points', 'masks'\] of pixmo-points-eval")
    with pytest.raises(PixmoError, match=expected):
        list(read_rows(SUBSETS["pixmo-points-eval"], parquet))
    with pytest.raises(PixmoError, match="parquet file not found"):
        list(read_rows(SUBSETS["pixmo-cap"], tmp_path / "nope.parquet"))


def test_count_eval_splits_keep_their_counts_without_points(tmp_path):
    # validation/test rows carry a count and no points: null, an empty "sequence of
    # struct", or no points column at all; each becomes a point set with only its count
    rows = [{"image_url": "http://h/a.jpg", "image_sha256": "a" * 64, "count": 4,
             "points": None, "label": "Cats"},
            {"image_url": "http://h/b.jpg", "image_sha256": "b" * 64, "count": 10,
             "points": {"x": [], "y": []}, "label": "cups"}]
    with_column = write_parquet(tmp_path / "test.parquet", "pixmo-count", rows)
    schema = SCHEMAS["pixmo-count"]
    schema = schema.remove(schema.get_field_index("points"))
    without = tmp_path / "validation.parquet"
    pq.write_table(pa.Table.from_pylist([{"image_url": "http://h/c.jpg", "count": 2,
                                          "image_sha256": "c" * 64, "label": "dogs"}],
                                        schema=schema), without)
    rows = [*read_rows(SUBSETS["pixmo-count"], with_column),
            *read_rows(SUBSETS["pixmo-count"], without)]
    sets = [get_subset("pixmo-count").annotate(row, loaded()).points for row in rows]
    assert sets == [[{"label": label, "points": [], "count": count,
                      "collection_method": "counting", "annotators": []}]
                    for label, count in (("Cats", 4), ("cups", 10), ("dogs", 2))]


def test_count_pixels_are_divided_by_the_displayed_size():
    # stored 40 x 20 with orientation 6 is displayed 20 x 40
    image = loaded(size=(40, 20), orientation=6)
    out = annotate("pixmo-count", {"label": "pear", "count": 1,
                                   "points": {"x": [10.0], "y": [30.0]}}, image)
    assert out.points == [{"label": "pear", "points": [[50.0, 75.0]], "count": 1,
                           "collection_method": "counting", "annotators": []}]
    plain = annotate("pixmo-count", {"label": "a", "count": 2,
                                     "points": {"x": [0.0, 200.0], "y": [100.0, 50.0]}})
    assert plain.points[0]["points"] == [[0.0, 100.0], [100.0, 50.0]]


def test_percent_points_are_kept_as_released_and_checked():
    pts = [{"x": 10.0, "y": 10.0}, {"x": 10.2, "y": 10.1}]  # close clicks are not folded
    out = annotate("pixmo-points", {"label": "  red   cup ", "count": 2, "points": pts,
                                    "collection_method": "pointing"})
    assert out.points[0]["points"] == [[10.0, 10.0], [10.2, 10.1]]
    assert out.points[0]["label"] == "red cup"
    many = [{"x": float(i), "y": 50.0} for i in range(60)]  # more than Molmo's 40: kept
    assert annotate("pixmo-points", {"label": "dots", "count": 60, "points": many,
                                     "collection_method": "counting"}).points[0]["count"] == 60
    bad = annotate("pixmo-points", {"label": "x", "count": 1, "points": [{"x": 50, "y": 120}],
                                    "collection_method": "pointing"})
    assert isinstance(bad, Reject) and bad.reason.value == "out_of_bounds"
    assert (bad.source, bad.record) == ("f.parquet", "7")
    method = annotate("pixmo-points", {"label": "x", "count": 0, "points": [],
                                       "collection_method": "clicking"})
    assert method.reason.value == "invalid_record" and "collection_method" in method.detail
    nan = annotate("pixmo-points-eval", {"label": "x", "points": [{"x": float("nan"), "y": 1}],
                                         "masks": [[[True]]]})
    assert nan.reason.value == "non_finite_coordinate"


def test_text_subsets_convert_rows():
    cap = annotate("pixmo-cap", {"caption": "A cat.", "transcripts": ["um a cat", "cat"]})
    assert cap.captions == [{"text": "A cat.", "method": "released"}]
    assert cap.transcripts == [{"text": "um a cat", "model": "released", "backend": "released"},
                               {"text": "cat", "model": "released", "backend": "released"}]
    ama = annotate("pixmo-ask-model-anything", {"question": "Why?", "answer": ""})
    assert ama.qa == [{"question": "Why?", "answer": "", "source": "pixmo-ask-model-anything"}]
    blank = annotate("pixmo-ask-model-anything", {"question": " ", "answer": "x"})
    assert blank.reason.value == "invalid_record" and blank.detail == "question: missing or blank"
    docs = annotate("pixmo-docs", {"image_id": "d", "questions": [
        {"question": "Max?", "answer": "3"}, {"question": "Min?", "answer": "1"}]})
    assert [q["answer"] for q in docs.qa] == ["3", "1"]


def test_point_explanations_need_parsed_response_and_matching_groups():
    base = {"question": "Where?", "response": "Here.", "parsed_response": "Here.",
            "alt_text": ["a", "b"], "points": [[{"x": 1.0, "y": 2.0}], [[3.0, 4.0]]]}
    out = annotate("pixmo-point-explanations", base)
    assert [p["points"] for p in out.points] == [[[1.0, 2.0]], [[3.0, 4.0]]]
    assert [p["label"] for p in out.points] == ["a", "b"]
    dropped = annotate("pixmo-point-explanations", {**base, "parsed_response": None})
    assert "official loader drops" in dropped.detail
    uneven = annotate("pixmo-point-explanations", {**base, "alt_text": ["a"]})
    assert uneven.detail == "alt_text has 1 entries but points has 2"


def test_unknown_subset_lists_the_known_ones():
    with pytest.raises(PixmoError, match=r"unknown subset 'pixmo-clocks'; expected one of "
                                         r"\['countbenchqa', 'pixmo-ask-model-anything'"):
        get_subset("pixmo-clocks")


def test_points_eval_masks_are_encoded_from_arrow_and_checked(tmp_path):
    image = loaded(size=(4, 2))  # displayed 4 wide, 2 high
    left = [[True, True, False, False], [True, False, False, False]]
    right = [[False, False, True, True], [False, False, False, True]]
    two = [{"x": 20.0, "y": 30.0}, {"x": 80.0, "y": 30.0}]
    cases = [  # (points, masks, the reject's detail or None)
        (two, [left, right], None),
        ([], [], None),
        (two, [left], "masks: 1 for 2 point(s)"),
        (two, [left, [[True, False]]],
         "masks[1]: 1 x 2, not the displayed image's 2 x 4"),
        (two, [left, [[True, False, True, False], [True]]], "masks[1]: not a rectangle of rows"),
        (two, [left, [[True, None, True, False], [True] * 4]],
         "masks[1]: a null or empty row"),
        (two, [left, [[], []]], "masks[1]: a null or empty row"),
        (two, [left, None], "masks[1]: not a rectangle of rows"),
        (two, None, "masks: missing"),
    ]
    parquet = write_parquet(tmp_path / "eval.parquet", "pixmo-points-eval", [
        {"image_url": "http://h/e.jpg", "image_sha256": "e" * 64, "label": "Cup",
         "points": points, "masks": masks} for points, masks, _ in cases])
    rows = list(read_rows(SUBSETS["pixmo-points-eval"], parquet))
    out = [get_subset("pixmo-points-eval").annotate(row, image) for row in rows]
    assert out[0].points[0]["masks"] == [{"height": 2, "width": 4, "counts": [0, 2, 2, 1, 3]},
                                         {"height": 2, "width": 4, "counts": [2, 2, 3, 1]}]
    assert out[1].points[0]["masks"] == [] and out[1].points[0]["count"] == 0
    for result, (_, _, detail) in zip(out[2:], cases[2:], strict=True):
        assert isinstance(result, Reject) and result.reason.value == "invalid_record"
        assert result.detail == detail


def test_countbenchqa_rows_become_a_question_and_its_count():
    out = annotate("countbenchqa", {"question": "How many dogs are there?", "number": 4,
                                    "text": "four dogs on a sofa"})
    assert out.qa == [{"question": "How many dogs are there?", "answer": "4",
                       "source": "countbenchqa"}]
    for data, detail in [({"question": "How many?", "number": None},
                          "number: expected an integer >= 0, got None"),
                         ({"question": "How many?", "number": -1},
                          "number: expected an integer >= 0, got -1"),
                         ({"question": " ", "number": 3}, "question: missing or blank")]:
        assert annotate("countbenchqa", data).detail == detail
