from __future__ import annotations

import io

from PIL import Image

from pixmo.dataset.samples import ImageAnnotations, build_sample, merge_images
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
