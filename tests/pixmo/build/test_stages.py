"""The build's stages on plain records, no engine: read, check, annotate, join, plan."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from pixmo.build.config import BuildConfig
from pixmo.build.images import resolve_image
from pixmo.build.output import Previous
from pixmo.build.parts import ImagePart, Keyed
from pixmo.build.stages import (
    Annotator,
    check_record,
    input_files,
    join_sample,
    plan,
    read_raw,
)
from pixmo.dataset.cutting import tar_bytes
from pixmo.dataset.format import json_bytes
from pixmo.errors import PixmoError
from pixmo.raw import RawRecord
from pixmo.rejects import Reason, Reject


def png(colour: tuple[int, int, int], size: tuple[int, int] = (40, 20)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def make_raw(root: Path, points: list[dict], captions: list[dict] | None = None) -> Path:
    """A raw folder with two images (a.png, b.png) and the given records."""
    (root / "images").mkdir(parents=True)
    (root / "images/a.png").write_bytes(png((200, 10, 10)))
    (root / "images/b.png").write_bytes(png((10, 200, 10)))
    (root / "points.jsonl").write_text("".join(json.dumps(p) + "\n" for p in points))
    if captions is not None:
        (root / "captions.jsonl").write_text("".join(json.dumps(c) + "\n" for c in captions))
    return root


def dot(image: str, x: float = 25.0, annotator: str = "a1") -> dict:
    return {"image": image, "label": "dot", "units": "percent",
            "points": [{"x": x, "y": 50.0}], "annotator": annotator}


def keyed_records(raw: Path, name: str = "points.jsonl") -> list[Keyed | Reject]:
    return [item if isinstance(item, Reject) else check_record(item)
            for item in read_raw(str(raw), name)]


def annotated(tmp_path: Path, points: list[dict]) -> tuple[BuildConfig, ImagePart]:
    """The part of images/a.png: the image resolved once, every record naming it annotated."""
    raw = make_raw(tmp_path / "raw", points)
    cfg = BuildConfig(str(raw), transcribe=False)
    records = keyed_records(raw)
    image, _ = resolve_image("images/a.png", records, cfg, tmp_path / "out")
    part, _ = Annotator(cfg).part(image, records)
    return cfg, part


def test_input_files_are_the_raw_files_that_exist(tmp_path):
    raw = make_raw(tmp_path / "raw", [dot("images/a.png")])
    assert input_files(raw) == ["points.jsonl"]
    with pytest.raises(PixmoError, match="no captions.jsonl, points.jsonl"):
        input_files(tmp_path / "raw" / "images")


def test_check_record_keys_records_by_image_and_rejects_broken_ones():
    good = check_record(RawRecord("points.jsonl", "1", dot("images/a.png")))
    assert good == Keyed("point_annotation", "images/a.png",
                         RawRecord("points.jsonl", "1", dot("images/a.png")))
    no_image = check_record(RawRecord("points.jsonl", "2", {"label": "dot"}))
    assert no_image == Reject("read", Reason.INVALID_RECORD, "image: must be a non-empty string",
                              "points.jsonl", "2")
    session = check_record(RawRecord("captions.jsonl", "3", {"image": "images/a.png"}))
    assert isinstance(session, Reject) and session.reason is Reason.INVALID_RECORD


def test_one_sample_per_image_from_its_annotated_records(tmp_path):
    raw = make_raw(tmp_path / "raw", [dot("images/a.png", 25.0), dot("images/a.png", 75.0, "a2"),
                                      dot("images/a.png", 400.0)])
    cfg = BuildConfig(str(raw), transcribe=False)
    records = keyed_records(raw)
    image, rejects = resolve_image("images/a.png", records, cfg, tmp_path / "out")
    assert rejects == [] and image.data == b""
    part, rejects = Annotator(cfg).part(image, records)
    assert [(r.record, r.reason) for r in rejects] == [("3", Reason.OUT_OF_BOUNDS)]
    sample = join_sample([part.image], part.annotations, cfg, Previous())
    assert sample.key == image.sha256[:24]
    assert sample.json["sources"] == [{"file": "points.jsonl", "record": "1"},
                                      {"file": "points.jsonl", "record": "2"}]
    assert [p["label"] for p in sample.json["points"]] == ["dot"]
    assert join_sample([part.image], (), cfg, Previous()) == []


def test_a_caption_session_is_rejected_when_transcription_is_off(tmp_path):
    session = {"image": "images/b.png", "audio": "audio/1.flac", "annotator": "a1",
               "session_id": "s-1"}
    raw = make_raw(tmp_path / "raw", [], [session])
    cfg = BuildConfig(str(raw), transcribe=False)
    (keyed,) = keyed_records(raw, "captions.jsonl")
    image, _ = resolve_image("images/b.png", [keyed], cfg, tmp_path / "out")
    assert Annotator(cfg)(keyed, image) == Reject(
        "transcribe", Reason.TRANSCRIPTION_FAILED, "transcription is switched off for this build",
        "captions.jsonl", "1")


def test_extend_mode_rejects_records_of_an_image_the_dataset_holds(tmp_path):
    cfg, part = annotated(tmp_path, [dot("images/a.png")])
    previous = Previous(keys=frozenset({part.image.sha256[:24]}))
    (reject,) = join_sample([part.image], part.annotations, cfg, previous)
    assert reject.reason is Reason.ALREADY_IN_DATASET and reject.record == "1"


def test_plan_encodes_the_json_once_and_counts_the_tar_bytes(tmp_path):
    cfg, part = annotated(tmp_path, [dot("images/a.png")])
    sample = join_sample([part.image], part.annotations, cfg, Previous())
    planned = plan(sample)
    assert planned.json == json_bytes(sample.json) and planned.extension == "png"
    data = (tmp_path / "raw/images/a.png").read_bytes()
    assert planned.size == tar_bytes([len(planned.json), len(data)])
