"""The Beam graph (``pipelines.beam.graph``): the shared Beam build's ledger, rejects and
samples, a build whose every record is rejected, where the DoFns run, and what reaches the
driver's one gathering (``_finish``): totals and shard stats, never a list per sample."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from pipelines.beam import cutting, graph
from pixmo.build import BuildConfig
from pixmo.dataset.format import ShardStats
from pixmo.dataset.reader import iter_samples
from pixmo.dataset.tables import read_dataset_json, read_rejects
from pixmo.dataset.verify import verify
from pixmo.dataset.writer import ShardConfig
from pixmo.errors import PixmoError
from tests.pipelines.conftest import EXPECTED_REJECTS, make_many


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


BOOKED = {graph.READ, graph.ACCEPTED, graph.FAILED, graph.SECONDS}
SEEN: dict[str, list] = {"finish": [], "plans": []}  # by the spies below, in this process
_FINISH, _JOIN_PLANS = graph._finish, cutting._join_plans


# Beam pickles what a graph calls: module functions by name, so these record to SEEN
def _seen_finish(books, *args):
    SEEN["finish"].append(books)
    return _FINISH(books, *args)


def _seen_join_plans(plans, *args):
    SEEN["plans"].append(plans)
    return _JOIN_PLANS(plans, *args)


@pytest.mark.parametrize("beam_args", [[], ["--runner=BundleBasedDirectRunner"]],
                         ids=["local", "cluster"])
def test_only_totals_and_shard_stats_reach_the_driver(tmp_path, monkeypatch, beam_args):
    """The same kind of input at 30 and 90 images, 3 rejects an image: what reaches
    ``_finish`` is a total per file, reason and stage and one stats record per shard
    (the same length at both sizes but for the shards), never a sample or a reject;
    the rejects are all in rejects.parquet and the ledger balances. On the cluster
    graph the shard plan gathers a first key per shard, one list per key range."""
    monkeypatch.setattr(graph, "_finish", _seen_finish)
    monkeypatch.setattr(cutting, "_join_plans", _seen_join_plans)
    monkeypatch.setitem(SEEN, "finish", [])
    monkeypatch.setitem(SEEN, "plans", [])
    shape = []
    for images in (30, 90):
        out = tmp_path / f"out{images}"
        cfg = BuildConfig(raw_dir=str(make_many(tmp_path / f"raw{images}", images)),
                          transcribe=False, shards=ShardConfig(max_samples=8,
                                                               partition_samples=40))
        graph.run(cfg, str(out), beam_args)
        assert verify(out) == []
        assert len(read_rejects(out / "rejects.parquet")) == 3 * images + 1
        shards = read_dataset_json(out / "dataset.json")["counts"]["shards"]
        books = SEEN["finish"][-1]
        assert all(kind in BOOKED and isinstance(item[0], str)
                   and isinstance(item[1], (int, float))
                   or kind == graph.WRITTEN and isinstance(item, ShardStats)
                   for kind, item in books)
        kinds = Counter(kind for kind, _ in books)
        assert kinds == {graph.READ: 2, graph.ACCEPTED: 2, graph.SECONDS: 5,
                         graph.WRITTEN: shards}  # no failures: no captions
        shape.append((len(books) - shards, shards))
    assert shape == [(9, 4), (9, 12)]  # 30 images: 1 key range of 4 shards; 90: 3 ranges
    if beam_args:
        assert [(len(plans), sum(len(firsts) for _, firsts in plans))
                for plans in SEEN["plans"]] == [(1, 4), (3, 12)]
