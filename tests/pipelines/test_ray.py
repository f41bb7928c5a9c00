"""The Ray build (``pipelines.ray``): the transcription actors' resources on clusters of every
shape; a build with a transcription actor per CPU of the test session's Ray, and the settings
it refuses before starting; a driver that receives the same few rows whatever the numbers of
samples and rejects; a re-run that keeps every shard and an extend that adds what Beam adds;
a regrouping that keeps each group in one block (the default Ray build against Beam's is in
``test_build.py``; the functions Ray runs on the blocks are tested in ``ray/test_blocks.py``)."""

from __future__ import annotations

import io
import json
import pickle
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from pipelines import ray as ray_engine
from pipelines.cli import main
from pipelines.ray import blocks
from pixmo.build import BuildConfig
from pixmo.dataset.tables import read_dataset_json, read_manifest, read_rejects
from pixmo.dataset.writer import ShardConfig
from pixmo.errors import ConfigError
from tests.one_line import assert_error_in_process, assert_error_in_shell
from tests.pipelines.conftest import assert_same_build, config, make_raw
from tests.pixmo.build.test_resume import make_points_raw


def _node(cpus: float, gpus: float = 0) -> dict[str, float]:
    return {"CPU": cpus, "GPU": gpus, "memory": 1e9}


@pytest.mark.parametrize(("workers", "gpus", "nodes", "reserved"), [
    (1, 0, [_node(2)], {"num_cpus": 1.0, "num_gpus": 0}),
    (2, 0, [_node(2)], {"num_cpus": 0.5, "num_gpus": 0}),  # one CPU left for the tasks
    (1, 0, [_node(1)], {"num_cpus": 0.0, "num_gpus": 0}),
    (3, 0, [_node(16)], {"num_cpus": 1.0, "num_gpus": 0}),
    (3, 0, [_node(4)], {"num_cpus": 1.0, "num_gpus": 0}),
    (4, 0, [_node(4), _node(4)], {"num_cpus": 1.0, "num_gpus": 0}),
    (8, 0, [_node(4), _node(4)], {"num_cpus": 0.75, "num_gpus": 0}),
    (3, 0, [_node(0), _node(4)], {"num_cpus": 1.0, "num_gpus": 0}),  # a head without CPUs
    (2, 0.5, [_node(2, gpus=1)], {"num_cpus": 0.5, "num_gpus": 0.5}),
    (2, 2, [_node(8, gpus=2), _node(8, gpus=2)], {"num_cpus": 1.0, "num_gpus": 2}),
])
def test_the_actor_pool_leaves_a_cpu_free_on_some_node(workers, gpus, nodes, reserved):
    assert ray_engine.actor_resources(workers, gpus, nodes) == reserved
    cpus = sum(n["CPU"] for n in nodes)
    assert workers * reserved["num_cpus"] <= cpus - sum(n["CPU"] >= 1 for n in nodes)


@pytest.mark.parametrize(("workers", "gpus", "nodes", "says"), [
    (0, 0, [_node(2)], "workers must be between 1 and the Ray cluster's 2 CPUs (one "
     "transcription actor each), got 0"),
    (3, 0, [_node(2)], "workers must be between 1 and the Ray cluster's 2 CPUs (one "
     "transcription actor each), got 3"),
    (1, 1.5, [_node(2, gpus=2)], "gpus_per_worker must be a share of one GPU (0 to 1) or a "
     "whole number of GPUs, got 1.5"),
    (1, 1, [_node(2)], "gpus_per_worker is 1 but the Ray cluster has no GPUs"),
    (3, 0.6, [_node(8, gpus=1), _node(8, gpus=1)], "gpus_per_worker 0.6 for each of 3 workers "
     "does not fit the Ray cluster's GPUs (1+1 on 2 node(s)): 2 fit"),  # one per GPU
])
def test_refusals_say_which_setting_and_why(workers, gpus, nodes, says):
    with pytest.raises(ConfigError) as caught:
        ray_engine.actor_resources(workers, gpus, nodes)
    assert str(caught.value) == says


def test_a_transcription_actor_per_cpu_builds_what_beam_builds(beam_build, tmp_path,
                                                               ray_session):
    """As many Whisper actors as the cluster has CPUs: the pool reserves part of a CPU
    each, the other stages' tasks still run, and the bytes are Beam's."""
    raw = make_raw(tmp_path / "raw")
    cpus = int(ray_session.cluster_resources()["CPU"])
    ray_engine.run(config(raw), str(tmp_path / "out"), workers=cpus)
    assert_same_build(tmp_path / "out", beam_build)


@pytest.mark.parametrize(("flags", "says"), [
    (["--workers", "{too_many}"], "--workers must be between 1 and the Ray cluster's {cpus} "
     "CPUs (one transcription actor each), got {too_many}"),
    (["--gpus-per-worker", "1"], "--gpus-per-worker is 1 but the Ray cluster has no GPUs"),
    (["--gpus-per-worker", "2.5"], "--gpus-per-worker must be a share of one GPU (0 to 1) or "
     "a whole number of GPUs, got 2.5"),
])
def test_the_cli_refuses_what_the_cluster_cannot_run_before_starting(tmp_path, capsys,
                                                                       ray_session, flags,
                                                                       says):
    cpus = int(ray_session.cluster_resources()["CPU"])
    paths = {"raw": str(make_raw(tmp_path / "raw")), "out": str(tmp_path / "out"),
             "cpus": str(cpus), "too_many": str(cpus + 1)}
    argv = ["build", "--engine", "ray", "--raw", "{raw}", "--out", "{out}", *flags]
    assert_error_in_process(main, "pixmo", (argv, says.format(**paths)), paths, capsys)
    assert not (tmp_path / "out").exists()


def test_a_ray_of_this_machine_is_refused_before_it_starts(tmp_path):
    """Without a cluster to join, the CPUs Ray would start with are known before it
    starts: the refusal is the only line, no Ray banner before it."""
    too_many = str(ray_engine.ray._private.utils.get_num_cpus() + 1)
    paths = {"raw": str(make_raw(tmp_path / "raw")), "out": str(tmp_path / "out")}
    argv = ["build", "--engine", "ray", "--raw", "{raw}", "--out", "{out}", "--workers",
            too_many]
    assert_error_in_shell("pixmo", (argv, f"--workers must be between 1 and the Ray cluster's "
                                          f"{int(too_many) - 1} CPUs"), paths)
    assert not (tmp_path / "out").exists()


def _points(root: Path, samples: int, bad: int) -> Path:
    """``samples`` tiny images with a pointing record each, then ``bad`` lines that are
    not JSON and ``bad`` records naming a missing image."""
    (root / "images").mkdir(parents=True)
    lines = []
    for i in range(samples):
        buf = io.BytesIO()
        Image.new("RGB", (8, 6), (i % 256, i // 256, 7)).save(buf, format="PNG")
        (root / f"images/{i:04d}.png").write_bytes(buf.getvalue())
        lines.append(json.dumps({"image": f"images/{i:04d}.png", "label": "dot",
                                 "units": "percent", "points": [{"x": 50, "y": 50}],
                                 "annotator": "a1"}))
    for j in range(bad):
        lines += ["{not json", json.dumps({"image": f"images/gone{j}.png", "label": "dot",
                                           "units": "percent", "points": [],
                                           "annotator": "a1"})]
    (root / "points.jsonl").write_text("\n".join(lines) + "\n")
    return root


# what a driver could call to receive a dataset's rows
RECEIVING = ("take_all", "take", "take_batch", "iter_rows", "iter_batches", "iter_torch_batches",
             "to_pandas", "to_arrow_refs", "to_numpy_refs", "show", "count", "sum", "unique")


def _items(rows: list[dict[str, Any]]) -> list[tuple[str, str, int]]:
    """What rows carry: each row's kind and name, and how many keys a plan row holds."""
    return sorted((r[blocks.KIND], r.get(blocks.NAME, ""), len(pickle.loads(r[blocks.BLOB]))
                   if r[blocks.KIND] == blocks.PLAN else 0) for r in rows)


def test_the_driver_receives_the_same_few_rows_for_ten_times_the_samples_and_rejects(
        tmp_path, monkeypatch, ray_session):
    """Every method that hands a dataset's rows to the driver is instrumented: only
    ``take_all`` is called, and at 20 samples and 6 rejects as at 200 and 60 it returns the
    same rows (per file, reason, stage, key range and shard) of about the same size (only
    the digits of the counts grow). Every reject still reaches rejects.parquet, and the
    ledger balances."""
    received: list[tuple[str, Any]] = []
    inside: list[str] = []  # take_all iterates rows itself: only the outer call counts

    def instrumented(name: str) -> Any:
        method = getattr(ray_engine.ray.data.Dataset, name)

        def receive(self: Any, *args: Any, **kwargs: Any) -> Any:
            inside.append(name)
            try:
                out = method(self, *args, **kwargs)
            finally:
                inside.pop()
            if not inside:
                received.append((name, out))
            return out
        return receive

    for name in RECEIVING:
        monkeypatch.setattr(ray_engine.ray.data.Dataset, name, instrumented(name))
    seen = []
    for samples, bad in ((20, 3), (200, 30)):
        received.clear()
        out = tmp_path / f"out-{samples}"
        cfg = BuildConfig(raw_dir=str(_points(tmp_path / f"raw-{samples}", samples, bad)),
                          transcribe=False, shards=ShardConfig(max_samples=1000))
        ray_engine.run(cfg, str(out))
        assert {name for name, _ in received} == {"take_all"}
        rows = [row for _, result in received for row in result]
        seen.append((_items(rows), len(pickle.dumps(rows))))
        assert len(read_manifest(out / "manifest.parquet")) == samples
        assert Counter(r["reason"] for r in read_rejects(out / "rejects.parquet")) == {
            "invalid_record": bad, "image_not_found": bad}
        (books,) = read_dataset_json(out / "dataset.json")["ledger"]
        assert books == {"file": "points.jsonl", "read": samples + 2 * bad,
                         "accepted": samples, "rejected": 2 * bad}
    (small, small_bytes), (large, large_bytes) = seen
    assert small == large
    assert ({kind for kind, _, _ in small} <= {blocks.READ, blocks.ACCEPTED, blocks.SAMPLES,
                                               blocks.SECONDS, blocks.PLAN, blocks.WRITTEN})
    assert (blocks.PLAN, "", 1) in small  # one key range, one shard: its first key
    assert abs(large_bytes - small_bytes) <= 32


def test_a_rerun_keeps_every_shard_and_an_extend_adds_what_beam_adds(tmp_path, ray_session):
    from pipelines.beam import graph as beam

    def cfg(raw: Path) -> BuildConfig:
        return BuildConfig(raw_dir=str(raw), transcribe=False,
                           shards=ShardConfig(max_samples=2))

    base = make_points_raw(tmp_path / "base", 5)
    ours, theirs = tmp_path / "ray", tmp_path / "beam"
    ray_engine.run(cfg(base), str(ours))
    beam.run(cfg(base), str(theirs))
    assert_same_build(ours, theirs)
    written = {p.name: p.stat().st_mtime_ns for p in (ours / "shards").iterdir()}
    ray_engine.run(cfg(base), str(ours))  # resume: every committed shard is current
    assert {p.name: p.stat().st_mtime_ns for p in (ours / "shards").iterdir()} == written
    assert_same_build(ours, theirs)
    more = make_points_raw(tmp_path / "more", 4, first=3)  # two images in the base already
    ray_engine.run(cfg(more), str(ours), mode="extend")
    beam.run(cfg(more), str(theirs), mode="extend")
    assert_same_build(ours, theirs)
    assert Counter(r["reason"] for r in read_rejects(ours / "rejects.parquet"))[
        "already_in_dataset"] == 2


def test_a_regrouping_puts_each_range_of_groups_in_one_block(ray_session):
    """Whatever blocks come in (here 5, each with rows of every group), ``_regroup`` makes
    one block per range of groups, so a function of a block sees every row of its groups;
    book rows go with the first range."""
    rows = blocks.Rows()
    for group in [*range(10)] * 3 + [blocks.BOOK] * 2:
        rows.add(group, blocks.RECORDS)
    dataset = ray_engine.ray.data.from_arrow(rows.table()).repartition(5)
    tables = ray_engine.ray.get(ray_engine._regroup(dataset, 10, 4).to_arrow_refs())
    groups = [sorted(set(t[blocks.GROUP].to_pylist())) for t in tables]
    assert groups == [[blocks.BOOK, 0, 1, 2], [3, 4], [5, 6, 7], [8, 9]]
    assert [t.num_rows for t in tables] == [11, 6, 9, 6]
    shards = ray_engine._regroup(ray_engine.ray.data.from_arrow(rows.table()), 3, 2, first=7)
    assert [sorted(set(t[blocks.GROUP].to_pylist())) for t in ray_engine.ray.get(
        shards.to_arrow_refs())] == [[blocks.BOOK, 0, 1, 2, 3, 4, 5, 6, 7, 8], [9]]
