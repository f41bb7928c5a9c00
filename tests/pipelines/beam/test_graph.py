"""The Beam graph (``pipelines.beam.graph``): the shared Beam build's ledger, rejects and
samples, a build whose every record is rejected, where the DoFns run, and the shard cutter
called as a plain DoFn on spilled samples."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from pipelines.beam import graph, shuffle
from pixmo import build
from pixmo.build import BuildConfig
from pixmo.dataset.reader import iter_samples
from pixmo.dataset.tables import read_dataset_json, read_rejects
from pixmo.dataset.verify import verify
from pixmo.dataset.writer import ShardConfig
from pixmo.errors import PixmoError
from tests.pipelines.conftest import EXPECTED_REJECTS


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


def test_beam_build_with_every_record_rejected(tmp_path):
    """No samples at all: no shard plan to wait for, an empty dataset, and the
    ledger still balances."""
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "points.jsonl").write_text(json.dumps(
        {"image": "images/none.png", "label": "x", "units": "percent", "points": [],
         "annotator": "a1"}) + "\n{not json\n")
    graph.run(BuildConfig(raw_dir=str(raw), transcribe=False), str(tmp_path / "out"))
    assert verify(tmp_path / "out") == []
    description = read_dataset_json(tmp_path / "out/dataset.json")
    assert description["counts"]["samples"] == 0 and description["counts"]["shards"] == 0
    assert description["ledger"] == [{"file": "points.jsonl", "read": 2, "accepted": 0,
                                      "rejected": 2}]


@pytest.mark.parametrize(("beam_args", "in_process", "local"), [
    ([], True, True),
    (["--direct_running_mode=in_memory"], True, True),
    (["--direct_running_mode=multi_processing", "--direct_num_workers=2"], False, True),
    (["--runner", "DataflowRunner", "--project", "p"], False, False),
])
def test_where_the_dofns_run(beam_args, in_process, local):
    """Progress and a stage pool only where the DoFns run in this process; groupings on
    local disk wherever the runner is FnApiRunner."""
    assert graph.runs_in_process(beam_args) is in_process
    assert graph.runs_locally(beam_args) is local
    if not in_process:
        with pytest.raises(PixmoError, match="--workers is for the local in-memory runner"):
            graph.run(BuildConfig(raw_dir="unused"), "unused", beam_args, workers=2)


def test_cut_streams_spilled_samples_into_shards_in_key_order(tmp_path):
    """``_Cut`` reads samples spilled in key order and yields one shard at a time,
    numbered from ``start``, each at most ``max_samples`` long."""
    keys = ["e5", "a1", "c3", "b2", "d4"]
    spill = shuffle.Spill(str(tmp_path), shuffle.ordered)
    spill.start_bundle()
    for key in keys:
        sample = build.PlannedSample(key=key, json=json.dumps({"key": key}).encode(),
                                     extension="png", size=1024)
        spill.process((key, sample.pack()))
    spills = [w.value for w in spill.finish_bundle()]
    cut = graph._Cut(BuildConfig(raw_dir="unused", shards=ShardConfig(max_samples=2)), start=3)
    shards = [(index, [build.PlannedSample.unpack(p).key for p in packed])
              for index, packed in cut.process(spills)]
    assert shards == [(3, ["a1", "b2"]), (4, ["c3", "d4"]), (5, ["e5"])]
