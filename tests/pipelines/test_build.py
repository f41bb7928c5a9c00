"""End-to-end builds on raw data made here: real images, real speech, click
logs with bad records of every kind; the ledger must balance."""

from __future__ import annotations

import io
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from pixmo.build.stages import BuildConfig
from pixmo.dataset.reader import iter_samples
from pixmo.dataset.tables import read_dataset_json, read_manifest, read_rejects
from pixmo.dataset.verify import verify
from pixmo.dataset.writer import ShardConfig
from pixmo.speech.config import QCConfig, SpeechConfig
from tests.paths import SPEECH, TESTS


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


def config(raw: Path) -> BuildConfig:
    qc = QCConfig(min_speech_s=5.0, min_words=5)
    return BuildConfig(raw_dir=str(raw), name="e2e", speech=SpeechConfig(qc=qc, device="cpu"),
                       shards=ShardConfig(max_samples=1))


@pytest.fixture(scope="module")
def beam_build(tmp_path_factory):
    from pipelines.beam import graph as beam
    root = tmp_path_factory.mktemp("beam")
    raw = make_raw(root / "raw")
    beam.run(config(raw), str(root / "out"))
    return root / "out"


def test_beam_build_ledger_and_rejects(beam_build):
    assert verify(beam_build) == []
    rejects = {(r["source"], r["record"]): r["reason"]
               for r in read_rejects(beam_build / "rejects.parquet")}
    assert rejects == EXPECTED_REJECTS
    description = read_dataset_json(beam_build / "dataset.json")
    assert description["engine"] == "beam"
    assert description["ledger"] == [
        {"file": "captions.jsonl", "read": 4, "accepted": 2, "rejected": 2},
        {"file": "points.jsonl", "read": 13, "accepted": 4, "rejected": 9},
    ]
    assert description["rejects_by_reason"] == dict(Counter(EXPECTED_REJECTS.values()))
    assert set(description["stage_seconds"]) == {"read", "image", "annotate", "join", "write"}
    assert description["stage_seconds"]["annotate"] > 0  # measured, not left out


def test_beam_build_samples(beam_build):
    samples = {s.json["image"]["source"]: s.json for s in iter_samples(beam_build)}
    assert sorted(samples) == ["images/a.png", "images/b.jpg"]  # a_copy merged into a
    a, b = samples["images/a.png"], samples["images/b.jpg"]
    assert [t["session_id"] for t in a["transcripts"]] == ["s-1", "s-2"]
    assert all(t["backend"] == "faster-whisper" and t["model"] == "tiny.en"
               for t in a["transcripts"])
    assert "refrigerator" in a["transcripts"][0]["text"].lower()
    (caption,) = a["captions"]
    assert caption["method"] == "cleanup" and len(caption["text"].split()) > 20
    (red,) = a["points"]  # two annotators merged into one consensus set
    assert red["annotators"] == ["p1", "p2"] and red["count"] == 1
    assert red["points"][0] == pytest.approx([(32 + 32.5) / 2 / 64 * 100, 50.0], abs=0.5)
    assert b["image"]["exif_orientation"] == 6
    assert (b["image"]["width"], b["image"]["height"]) == (48, 64)
    assert [(p["label"], p["count"]) for p in b["points"]] == [("dog", 0), ("green thing", 1)]
    assert len(list((beam_build / "shards").glob("*.tar"))) == 2


def test_cli_build_and_transcribe(tmp_path, capsys):
    from pipelines.cli import main

    raw = make_raw(tmp_path / "raw")
    out = tmp_path / "out"
    assert main(["build", "--raw", str(raw), "--out", str(out), "--min-speech-s", "5",
                 "--no-transcribe", "--direct_running_mode=in_memory"]) == 0
    printed = capsys.readouterr().out
    assert "built" in printed and "transcription_failed" in printed
    assert "stage" in printed and "seconds" in printed
    assert verify(out) == []
    assert main(["transcribe", str(SPEECH / "desk.flac"), str(raw / "images/broken.png"),
                 "--min-speech-s", "5"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0]["transcript"]["model"] == "tiny.en"
    assert lines[1]["reject"]["reason"] == "audio_unreadable"


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


def test_ray_build_equals_beam_build(beam_build, tmp_path, ray_session):
    """Ray's workers decode under OMP_NUM_THREADS=1 (Ray sets it), the Beam
    build in this process without it: same transcripts, same bytes."""
    from pipelines import ray as ray_engine

    raw = make_raw(tmp_path / "raw")
    ray_engine.run(config(raw), str(tmp_path / "out"))
    description = read_dataset_json(tmp_path / "out/dataset.json")
    assert description["engine"] == "ray"
    assert set(description["stage_seconds"]) == {"read", "image+annotate+join", "write"}
    assert_same_build(tmp_path / "out", beam_build)


def test_beam_with_worker_processes_equals_one_process(beam_build, tmp_path):
    """``workers=2``: images, annotations (Whisper loaded in each pool process)
    and shards come from a local process pool; the result is byte for byte the
    same, and the stage times still reach dataset.json."""
    from pipelines.beam import graph as beam
    raw = make_raw(tmp_path / "raw")
    beam.run(config(raw), str(tmp_path / "out"), workers=2)
    assert_same_build(tmp_path / "out", beam_build)
    seconds = read_dataset_json(tmp_path / "out/dataset.json")["stage_seconds"]
    assert seconds["annotate"] > 0  # measured in the pool, not left out


# What a user's shell or another library may set: one OpenMP thread, Intel MKL
# forced on (CTranslate2's own choice on Intel CPUs, whose sums follow the
# thread count), oneDNN capped at SSE4.1. Unpinned, MKL and the cap change
# tiny.en's transcripts of the sample speech on an AMD EPYC, and the thread count
# changed them between Ray and Beam on the machine of issue 15.
OTHER_THREAD_ENVIRONMENT = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                            "CT2_USE_MKL": "1", "ONEDNN_MAX_CPU_ISA": "SSE41"}


def test_beam_workers_in_another_thread_environment_equal_one_process(beam_build, tmp_path):
    """A fresh process whose environment sets threads and kernels differently
    builds with ``workers=2``: the same bytes as the build in this process."""
    import os
    import subprocess
    import sys

    script = ("import sys; sys.path.insert(0, sys.argv[1]); "
              "from pathlib import Path; from pipelines import beam; "
              "from test_build import config, make_raw; "
              "beam.run(config(make_raw(Path(sys.argv[2]))), sys.argv[3], workers=2)")
    env = {**os.environ, **OTHER_THREAD_ENVIRONMENT}
    subprocess.run([sys.executable, "-c", script, str(TESTS),
                    str(tmp_path / "raw"), str(tmp_path / "out")], env=env, check=True)
    assert_same_build(tmp_path / "out", beam_build)


def test_beam_build_with_every_record_rejected(tmp_path):
    """No samples at all: no shard plan to wait for, an empty dataset, and the
    ledger still balances."""
    from pipelines.beam import graph as beam
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "points.jsonl").write_text(json.dumps(
        {"image": "images/none.png", "label": "x", "units": "percent", "points": [],
         "annotator": "a1"}) + "\n{not json\n")
    beam.run(BuildConfig(raw_dir=str(raw), transcribe=False), str(tmp_path / "out"))
    assert verify(tmp_path / "out") == []
    description = read_dataset_json(tmp_path / "out/dataset.json")
    assert description["counts"]["samples"] == 0 and description["counts"]["shards"] == 0
    assert description["ledger"] == [{"file": "points.jsonl", "read": 2, "accepted": 0,
                                      "rejected": 2}]


def test_beam_cluster_graph_equals_local_graph(beam_build, tmp_path):
    """A runner that is not FnApiRunner gets the cluster graph (Beam's own
    GroupByKey and a shard plan of every sample's size instead of groupings on
    local disk); the legacy BundleBasedDirectRunner runs it here. Same bytes."""
    from pipelines.beam import graph as beam
    assert not beam.runs_locally(["--runner=BundleBasedDirectRunner"])
    raw = make_raw(tmp_path / "raw")
    beam.run(config(raw), str(tmp_path / "out"), ["--runner=BundleBasedDirectRunner"])
    assert_same_build(tmp_path / "out", beam_build)
    assert len(read_manifest(beam_build / "manifest.parquet")) == 2
