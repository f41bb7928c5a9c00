"""Synthetic raw data: every good record valid, every bad record rejected by the
real build for the reason truth.json gives, and the same seed gives the same bytes."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from pixmo.build import BuildConfig
from pixmo.dataset.reader import iter_samples
from pixmo.dataset.tables import read_dataset_json, read_rejects
from pixmo.dataset.verify import verify
from pixmo.dataset.writer import ShardConfig
from pixmo.errors import PixmoError
from pixmo.points.annotations import orient_point
from pixmo.schema import check
from pixmo.speech.config import QCConfig, SpeechConfig
from pixmo.synth.config import SynthConfig
from pixmo.synth.raw import synthesize
from pixmo.synth.scenes import COLOURS, SceneConfig

SEED = 11
# more EXIF, speakers and counting than the defaults, so four scenes show every kind
CONFIG = SynthConfig(exif_share=0.6, multi_speaker_share=0.5,
                     scene=SceneConfig(counting_share=0.5))


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "raw"
    report = synthesize(root, scenes=4, seed=SEED, config=CONFIG)
    assert report.images == 4 and report.bad_records == 17
    return root


@pytest.fixture(scope="module")
def truth(raw) -> dict:
    return json.loads((raw / "truth.json").read_text())


@pytest.fixture(scope="module")
def built(raw, tmp_path_factory) -> Path:
    from pipelines.beam import graph as beam
    out = tmp_path_factory.mktemp("synth") / "out"
    qc = QCConfig(min_speech_s=5.0, min_words=5)
    beam.run(BuildConfig(raw_dir=str(raw), name="synth",
                         speech=SpeechConfig(qc=qc, device="cpu"),
                         shards=ShardConfig(max_samples=2)), str(out))
    return out


def _lines(raw: Path, name: str) -> list[str]:
    return (raw / name).read_text().splitlines()


def test_covers_every_kind(truth):
    images = truth["images"]
    assert {i["format"] for i in images} == {"jpeg", "png"}
    assert any(i["exif_orientation"] in (3, 6, 8) for i in images)
    assert any(len(i["descriptions"]) >= 2 for i in images)
    assert any(lab["collection_method"] == "counting" and lab["count"] >= 8
               for i in images for lab in i["labels"])
    assert any(i["absent_labels"] for i in images)
    assert sorted({b["reason"] for b in truth["bad_records"]}) == sorted([
        "audio_empty", "audio_not_found", "audio_unreadable", "empty_label",
        "image_not_found", "image_sha256_mismatch", "image_unreadable", "invalid_record",
        "non_finite_coordinate", "out_of_bounds", "silence", "speech_too_short",
        "too_many_points", "unknown_units"])
    for i in images:
        for d in i["descriptions"]:
            assert 8.0 <= d["seconds"] <= 30.0, d


def test_good_records_pass_their_schema(raw, truth):
    bad = {(b["file"], int(b["record"])) for b in truth["bad_records"]}
    for file, schema in (("captions.jsonl", "caption_session"),
                         ("points.jsonl", "point_annotation")):
        good = 0
        for n, line in enumerate(_lines(raw, file), start=1):
            if (file, n) in bad:
                continue
            assert check(schema, json.loads(line)) is None, (file, n, line)
            good += 1
        assert good > 0


def test_images_match_truth(raw, truth):
    for entry in truth["images"]:
        data = (raw / entry["image"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
        with Image.open(io.BytesIO(data)) as image:
            assert image.format.lower() == entry["format"]
            assert image.getexif().get(0x0112) == entry["exif_orientation"]
            shown = ImageOps.exif_transpose(image)
            assert shown.size == (entry["width"], entry["height"])
            # the pixel at each object's centre has the object's colour, not the background
            for obj in entry["objects"]:
                x = min(int(obj["centre"][0] / 100 * shown.width), shown.width - 1)
                y = min(int(obj["centre"][1] / 100 * shown.height), shown.height - 1)
                got = np.array(shown.convert("RGB").getpixel((x, y)), float)
                assert np.abs(got - COLOURS[obj["colour"]]).max() < 40, (entry["image"], obj)


def test_clicks_land_on_true_objects_after_exif(raw, truth):
    """Clicks are stored before EXIF rotation; rotated like the build does, each
    lands within a few percent of a true centre of its label."""
    images = {i["image"]: i for i in truth["images"]}
    bad = {int(b["record"]) for b in truth["bad_records"] if b["file"] == "points.jsonl"}
    checked = 0
    for n, line in enumerate(_lines(raw, "points.jsonl"), start=1):
        if n in bad:
            continue
        record = json.loads(line)
        entry = images[record["image"]]
        labels = {lab["label"]: lab for lab in entry["labels"]}
        if not record["points"]:
            assert record["label"] in entry["absent_labels"]
            assert record["label"] not in labels
            continue
        orientation = entry["exif_orientation"] or 1
        stored = (entry["height"], entry["width"]) if orientation in (6, 8) else (
            entry["width"], entry["height"])
        scale = {"pixels": (100 / stored[0], 100 / stored[1]), "percent": (1, 1),
                 "normalized": (100, 100)}[record["units"]]
        centres = np.array(labels[record["label"]]["points"])
        for p in record["points"]:
            x, y = orient_point(p["x"] * scale[0], p["y"] * scale[1], orientation)
            assert np.hypot(*(centres - [x, y]).T).min() < 6.0, (record, x, y)
            checked += 1
    assert checked > 20


def test_build_rejects_exactly_the_bad_records(built, raw, truth):
    assert verify(built) == []
    rejects = {(r["source"], r["record"]): r["reason"]
               for r in read_rejects(built / "rejects.parquet")}
    expected = {(b["file"], b["record"]): b["reason"] for b in truth["bad_records"]}
    assert rejects == expected  # every good caption passes QC, every bad record is caught
    description = read_dataset_json(built / "dataset.json")
    for entry in description["ledger"]:
        assert entry["read"] == len(_lines(raw, entry["file"]))
        assert entry["read"] == entry["accepted"] + entry["rejected"]
    assert description["counts"]["samples"] == len(truth["images"])


def test_built_samples_hold_the_true_labels(built, truth):
    images = {i["sha256"]: i for i in truth["images"]}
    for sample in iter_samples(built):
        entry = images[sample.json["image"]["sha256"]]
        assert (sample.json["image"]["width"], sample.json["image"]["height"]) == \
            (entry["width"], entry["height"])
        assert len(sample.json["transcripts"]) == len(entry["descriptions"])
        true = {lab["label"]: lab["count"] for lab in entry["labels"]}
        for point_set in sample.json["points"]:
            if point_set["label"] in entry["absent_labels"]:
                assert point_set["count"] == 0
            else:
                # annotators miss an object now and then; consensus may drop it
                assert 0.6 * true[point_set["label"]] <= point_set["count"] \
                    <= true[point_set["label"]]
        words = " ".join(t["text"] for t in sample.json["transcripts"]).lower()
        assert any(lab.split()[0] in words for lab in true)


def test_same_seed_same_bytes_and_held_out_split(raw, tmp_path):
    again = synthesize(tmp_path / "again", scenes=4, seed=SEED, config=CONFIG)
    assert _files(Path(again.out_dir)) == _files(raw)
    held_out = synthesize(tmp_path / "held", scenes=1, seed=SEED,
                          config=SynthConfig(first_index=3, exif_share=0.6,
                                             multi_speaker_share=0.5, bad_records=False,
                                             scene=SceneConfig(counting_share=0.5)))
    held = _files(Path(held_out.out_dir))
    (name,) = [k for k in held if k.startswith("images/scene_")]
    assert name.startswith("images/scene_00003.")
    assert held[name] == (raw / name).read_bytes()  # scene 3 does not depend on scenes 0-2
    truth = json.loads(held["truth.json"])
    assert truth["bad_records"] == [] and truth["first_index"] == 3
    other = synthesize(tmp_path / "other", scenes=1, seed=SEED + 1,
                       config=SynthConfig(bad_records=False))
    assert json.loads(Path(other.truth).read_text())["images"][0]["sha256"] != \
        json.loads((raw / "truth.json").read_text())["images"][0]["sha256"]


def test_refuses_bad_arguments(raw, tmp_path):
    with pytest.raises(PixmoError, match="scenes must be >= 1"):
        synthesize(tmp_path / "none", scenes=0, seed=1)
    with pytest.raises(PixmoError, match="already holds synthetic data"):
        synthesize(raw, scenes=1, seed=1)


def test_speech_share_leaves_images_undescribed(tmp_path):
    report = synthesize(tmp_path / "raw", scenes=3, seed=4,
                        config=SynthConfig(speech_share=0.0, bad_records=False))
    assert report.images == 3 and report.caption_sessions == 0 and report.audio_seconds == 0
    assert report.point_annotations > 0
    assert (tmp_path / "raw/captions.jsonl").read_text() == ""
