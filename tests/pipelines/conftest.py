"""Raw data for builds, made here: real images, real speech, click logs with bad records
of every kind; one Beam build of it shared by the tests of every engine."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from pixmo.build import BuildConfig
from pixmo.dataset.reader import iter_samples
from pixmo.dataset.tables import read_dataset_json, read_manifest, read_rejects
from pixmo.dataset.verify import verify
from pixmo.dataset.writer import ShardConfig
from pixmo.speech.config import QCConfig, SpeechConfig
from tests.paths import SPEECH


def _image(path: Path, colour, size=(64, 48), orientation: int | None = None) -> bytes:
    image = Image.new("RGB", size, colour)
    buf = io.BytesIO()
    if orientation is None:
        image.save(buf, format="PNG")
    else:
        exif = Image.Exif()
        exif[0x0112] = orientation
        image.save(buf, format="JPEG", exif=exif.tobytes())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


def make_raw(root: Path) -> Path:
    images = root / "images"
    _image(images / "a.png", (200, 10, 10))
    shutil.copy(images / "a.png", images / "a_copy.png")  # same bytes, second name
    _image(images / "b.jpg", (10, 200, 10), orientation=6)
    _image(images / "c.png", (10, 10, 200))
    (images / "broken.png").write_bytes(b"\x89PNG not really")
    audio = root / "audio"
    audio.mkdir()
    shutil.copy(SPEECH / "kitchen.opus", audio / "kitchen.opus")
    shutil.copy(SPEECH / "desk.flac", audio / "desk.flac")
    sessions = [
        {"image": "images/a.png", "audio": "audio/kitchen.opus", "annotator": "s1",
         "session_id": "s-1"},
        {"image": "images/a_copy.png", "audio": "audio/desk.flac", "annotator": "s2",
         "session_id": "s-2", "language": "en"},
        {"image": "images/c.png", "audio": "audio/missing.flac", "annotator": "s3",
         "session_id": "s-3"},
        {"image": "images/c.png", "annotator": "s4", "session_id": "s-4"},  # no audio field
    ]
    (root / "captions.jsonl").write_text("".join(json.dumps(s) + "\n" for s in sessions))
    good = {"label": "red square", "points": [{"x": 32, "y": 24}], "units": "pixels",
            "annotator": "p1"}
    points = [
        {**good, "image": "images/a.png"},
        {**good, "image": "images/a_copy.png", "annotator": "p2",
         "points": [{"x": 32.5, "y": 24}]},
        {**good, "image": "images/b.jpg", "label": "green thing", "units": "percent",
         "points": [{"x": 10, "y": 90}]},
        {**good, "image": "images/b.jpg", "label": "dog", "points": []},
        {**good, "image": "images/c.png", "units": "furlongs"},
        {**good, "image": "images/c.png", "label": ""},
        {**good, "image": "images/c.png", "points": [{"x": 500, "y": 2}]},
        {**good, "image": "images/nope.png"},
        {**good, "image": "images/broken.png"},
        {**good, "image": "images/c.png", "image_sha256": "0" * 64},
        {**good, "image": "images/c.png", "collection_method": "counting",
         "points": [{"x": i, "y": 1} for i in range(0, 63, 1)]},
    ]
    lines = [json.dumps(p) for p in points] + ["{not json", "[1, 2]"]
    (root / "points.jsonl").write_text("\n".join(lines) + "\n")
    return root


EXPECTED_REJECTS = {
    ("captions.jsonl", "3"): "audio_not_found",
    ("captions.jsonl", "4"): "invalid_record",
    ("points.jsonl", "5"): "unknown_units",
    ("points.jsonl", "6"): "empty_label",
    ("points.jsonl", "7"): "out_of_bounds",
    ("points.jsonl", "8"): "image_not_found",
    ("points.jsonl", "9"): "image_unreadable",
    ("points.jsonl", "10"): "image_sha256_mismatch",
    ("points.jsonl", "11"): "too_many_points",
    ("points.jsonl", "12"): "invalid_record",
    ("points.jsonl", "13"): "invalid_record",
}


def make_many(root: Path, images: int) -> Path:
    """A raw folder of ``images`` small images (no audio) and two points files:
    per image two accepted records and three rejects (unknown units, empty label,
    an image not found), and a line that is not JSON."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    lines, rows = [], []
    for i in range(images):
        name = f"images/{i:04d}.png"
        _image(root / name, (i % 251, (7 * i) % 253, 99), size=(48, 32))
        good = {"image": name, "label": "dot", "units": "percent", "annotator": "a1"}
        lines += [{**good, "points": [{"x": 10 + i % 80, "y": 50}]},
                  {**good, "units": "furlongs", "points": [{"x": 1, "y": 1}]},
                  {**good, "label": "", "points": [{"x": 1, "y": 1}]}]
        spot = {"x": [20.0], "y": [float(i % 90)]}  # parquet: HF's point columns
        rows += [{**good, "label": "spot", "annotator": "a2", "points": spot},
                 {**good, "image": f"images/missing-{i}.png", "points": {"x": [1.0], "y": [1.0]}}]
    (root / "points.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines)
                                       + "{not json\n")
    pq.write_table(pa.Table.from_pylist(rows), root / "points.parquet")
    return root


def config(raw: Path) -> BuildConfig:
    qc = QCConfig(min_speech_s=5.0, min_words=5)
    return BuildConfig(raw_dir=str(raw), name="e2e", speech=SpeechConfig(qc=qc, device="cpu"),
                       shards=ShardConfig(max_samples=1))


@pytest.fixture(scope="session")
def beam_build(tmp_path_factory):
    from pipelines.beam import graph as beam
    root = tmp_path_factory.mktemp("beam")
    raw = make_raw(root / "raw")
    beam.run(config(raw), str(root / "out"))
    return root / "out"


def assert_same_build(ours: Path, theirs: Path) -> None:
    """Two builds of one raw folder agree byte for byte: tars, sample JSON,
    manifest, rejects and ledger."""
    assert verify(ours) == []
    assert {s.key: s.json for s in iter_samples(ours)} == {
        s.key: s.json for s in iter_samples(theirs)}
    tars = [sorted((d / "shards").glob("*.tar")) for d in (ours, theirs)]
    assert [p.name for p in tars[0]] == [p.name for p in tars[1]]
    assert [p.read_bytes() for p in tars[0]] == [p.read_bytes() for p in tars[1]]
    assert read_manifest(ours / "manifest.parquet") == read_manifest(theirs / "manifest.parquet")
    assert read_rejects(ours / "rejects.parquet") == read_rejects(theirs / "rejects.parquet")
    ledgers = [read_dataset_json(d / "dataset.json")["ledger"] for d in (ours, theirs)]
    assert ledgers[0] == ledgers[1]
