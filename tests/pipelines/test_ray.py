"""The Ray Data graph's batch functions (``pipelines.ray``), called on plain numpy batches
as Ray would call them; the transcription actors' resources on clusters of every shape; a
build with a transcription actor per CPU of the test session's Ray, and the settings it
refuses before starting (the default Ray build against Beam's is in ``test_build.py``)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from pipelines import ray as ray_engine
from pipelines.cli import main
from pixmo.build import BuildConfig
from pixmo.errors import ConfigError
from pixmo.images import LoadedImage
from pixmo.rejects import Reject
from tests.one_line import assert_error_in_process, assert_error_in_shell
from tests.pipelines.conftest import assert_same_build, config, make_raw


def _records(tmp_path: Path) -> tuple[BuildConfig, ray_engine.Batch]:
    cfg = BuildConfig(raw_dir=str(make_raw(tmp_path / "raw")), transcribe=False)
    files = ray_engine._batch(["captions.jsonl", "points.jsonl"])
    return cfg, ray_engine._read(files, cfg.raw_dir)


def test_batch_is_one_object_column_and_its_keys():
    batch = ray_engine._batch([("a", 1), ("b", 2)], key=lambda o: o[0])
    assert batch[ray_engine.OBJ].dtype == object and list(batch[ray_engine.OBJ]) == [("a", 1),
                                                                                    ("b", 2)]
    assert list(batch[ray_engine.KEY]) == ["a", "b"]
    assert set(ray_engine._batch([])) == {ray_engine.OBJ}


def test_read_keys_records_by_image_and_rejects_by_nothing(tmp_path):
    _, batch = _records(tmp_path)
    objs, keys = list(batch[ray_engine.OBJ]), list(batch[ray_engine.KEY])
    assert Counter(ray_engine._source(o) for o in objs) == {"captions.jsonl": 4,
                                                           "points.jsonl": 13}
    rejects = [o for o in objs if isinstance(o, Reject)]
    assert sorted(r.reason.value for r in rejects) == ["invalid_record"] * 3
    assert all(k == "" for o, k in zip(objs, keys, strict=True) if isinstance(o, Reject))
    assert Counter(keys)["images/c.png"] == 6


def _group(batch: ray_engine.Batch, key: str) -> ray_engine.Batch:
    rows = np.asarray(batch[ray_engine.KEY]) == key
    return {name: column[rows] for name, column in batch.items()}


def test_resolve_loads_the_image_and_pairs_it_with_its_records(tmp_path):
    cfg, batch = _records(tmp_path)
    out = str(tmp_path / "out")
    rejects = _group(batch, "")
    assert list(ray_engine._resolve(rejects, cfg, out)[ray_engine.OBJ]) == list(
        rejects[ray_engine.OBJ])  # rejects pass through untouched
    (missing,) = ray_engine._resolve(_group(batch, "images/nope.png"), cfg, out)[ray_engine.OBJ]
    assert missing.reason.value == "image_not_found"
    (reject, image, *pairs) = ray_engine._resolve(_group(batch, "images/c.png"), cfg,
                                                  out)[ray_engine.OBJ]  # rejects come first
    assert reject.reason.value == "image_sha256_mismatch" and isinstance(image, LoadedImage)
    assert len(pairs) == 5 and all(img is image for img, _ in pairs)
    assert ray_engine._sha(image) == image.sha256 and ray_engine._sha(reject) == ""


def test_summary_keeps_rejects_whole_and_samples_small():
    reject = Reject("read", "invalid_record", "not json", "points.jsonl", "12")

    class Planned:
        key, size = "k1", 4096

    batch = ray_engine._batch([reject, (Planned(), ["points.jsonl"], ["transcription_failed"])])
    assert list(ray_engine._summary(batch)[ray_engine.OBJ]) == [
        reject, ("k1", 4096, ["points.jsonl"], ["transcription_failed"])]


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
