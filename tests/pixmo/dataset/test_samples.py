from __future__ import annotations

import io

import pytest
from PIL import Image

from pixmo.dataset.samples import (
    KEY_LENGTH,
    ImageAnnotations,
    build_sample,
    merge_images,
    sample_key,
)
from pixmo.images import decode_image
from pixmo.schema import check


def _png(colour) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (20, 10), colour).save(buf, format="PNG")
    return buf.getvalue()


def test_one_sample_per_content_hash_in_any_order():
    data = _png((1, 2, 3))
    a, b = decode_image(data, "images/b.png"), decode_image(data, "https://x.org/a.png")
    image = merge_images([a, b])
    assert image.source == "https://x.org/a.png"
    sets = [{"label": "z dot", "points": [[1.0, 2.0]], "count": 1,
             "collection_method": "pointing", "annotators": ["a2"]},
            {"label": "a dot", "points": [], "count": 0, "collection_method": "pointing",
             "annotators": ["a1"]}]
    first = build_sample(ImageAnnotations(image, points=sets, sources=[
        ("points.jsonl", "10"), ("points.jsonl", "9"), ("captions.jsonl", "2")]))
    second = build_sample(ImageAnnotations(image, points=sets[::-1], sources=[
        ("captions.jsonl", "2"), ("points.jsonl", "9"), ("points.jsonl", "10")]))
    assert first.json == second.json
    assert first.key == image.sha256[:24] and "." not in first.key
    assert [p["label"] for p in first.json["points"]] == ["a dot", "z dot"]
    assert first.json["sources"] == [{"file": "captions.jsonl", "record": "2"},
                                     {"file": "points.jsonl", "record": "9"},
                                     {"file": "points.jsonl", "record": "10"}]
    assert first.files == {"png": data}
    assert check("sample", first.json) is None


def test_qa_keep_their_order_and_failures_appear_only_when_there_are_some():
    image = decode_image(_png((4, 5, 6)), "images/c.png")
    turns = [{"question": "Q2?", "answer": "A2."}, {"question": "Q1?", "answer": "A1."}]
    sample = build_sample(ImageAnnotations(image, qa=turns, sources=[("qa.jsonl", "1")]))
    assert sample.json["qa"] == turns  # a conversation's turns are not sorted
    assert "failures" not in sample.json
    failed = build_sample(ImageAnnotations(image, failures=[
        {"stage": "caption", "reason": "caption_failed", "detail": "b"},
        {"stage": "caption", "reason": "caption_failed", "detail": "a"}]))
    assert [f["detail"] for f in failed.json["failures"]] == ["a", "b"]
    assert sample_key(image.sha256) == sample.key == image.sha256[:KEY_LENGTH]


def test_merge_images_needs_one_content_hash():
    a, b = decode_image(_png((1, 1, 1)), "a.png"), decode_image(_png((2, 2, 2)), "b.png")
    with pytest.raises(ValueError, match="one content hash"):
        merge_images([a, b])
