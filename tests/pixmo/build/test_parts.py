"""What the stages hand each other: every type packs to plain values and back unchanged."""

from __future__ import annotations

import pickle

import pytest

from pixmo.build.parts import (
    Annotation,
    ImagePart,
    Keyed,
    PlannedSample,
    pack_fields,
    unpack_fields,
)
from pixmo.images import LoadedImage
from pixmo.points.annotations import PointAnnotation
from pixmo.raw import RawRecord

IMAGE = LoadedImage(data=b"", sha256="ab" * 32, format="png", stored_width=40,
                    stored_height=20, orientation=6, source="images/a.png", size=123,
                    sha256_flagged=True)
POINTS = PointAnnotation(image="images/a.png", label="dot", points=((25.0, 50.0),),
                         annotator="a1", collection_method="pointing", width=20, height=40,
                         source="points.jsonl", record="4", clamped=1)


def plain(value) -> bool:
    """Only tuples, dicts, strings, numbers, bytes and None: what Beam encodes natively."""
    if isinstance(value, (tuple, list)):
        return all(map(plain, value))
    if isinstance(value, dict):
        return all(plain(k) and plain(v) for k, v in value.items())
    return value is None or isinstance(value, (str, int, float, bytes))


def test_flat_dataclasses_pack_as_field_values_and_come_back_by_name():
    packed = pack_fields(IMAGE)
    assert packed == (b"", "ab" * 32, "png", 40, 20, 6, "images/a.png", 123, True)
    assert unpack_fields(LoadedImage, packed) == IMAGE
    with pytest.raises(ValueError):  # a stale or foreign tuple never fills the wrong fields
        unpack_fields(LoadedImage, packed[:-1])


@pytest.mark.parametrize("value", [
    Keyed("point_annotation", "images/a.png", RawRecord("points.jsonl", "4", {"label": "dot"})),
    ImagePart(IMAGE, (Annotation(IMAGE.sha256, "point_annotation", "points.jsonl", "4",
                                 points=POINTS),
                      Annotation(IMAGE.sha256, "caption_session", "captions.jsonl", "1",
                                 transcript={"text": "a red square"}))),
    PlannedSample(key="abab", json=b'{"key":"abab"}', extension="png", size=2048),
], ids=lambda v: type(v).__name__)
def test_every_part_packs_to_plain_values_and_back(value):
    packed = value.pack()
    assert plain(packed)
    assert type(value).unpack(packed) == value
    assert type(value).unpack(pickle.loads(pickle.dumps(packed))) == value
