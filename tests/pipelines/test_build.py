"""The same raw folder built by every engine and runner gives the same bytes: Ray, Beam
with worker processes (also under another thread environment) and Beam's cluster graph,
each against the one Beam build in ``conftest.py``."""

from __future__ import annotations

from pathlib import Path

from pixmo.build import BuildConfig
from pixmo.dataset.cutting import partition_of
from pixmo.dataset.tables import read_dataset_json, read_manifest
from pixmo.dataset.writer import ShardConfig
from tests.paths import REPO
from tests.pipelines.conftest import assert_same_build, config, make_many, make_raw


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
              "from pathlib import Path; from pipelines.beam import graph; "
              "from tests.pipelines.conftest import config, make_raw; "
              "graph.run(config(make_raw(Path(sys.argv[2]))), sys.argv[3], workers=2)")
    env = {**os.environ, **OTHER_THREAD_ENVIRONMENT}
    subprocess.run([sys.executable, "-c", script, str(REPO),
                    str(tmp_path / "raw"), str(tmp_path / "out")], env=env, check=True)
    assert_same_build(tmp_path / "out", beam_build)


def test_beam_cluster_graph_equals_local_graph(beam_build, tmp_path):
    """A runner that is not FnApiRunner gets the cluster graph (Beam's own
    GroupByKey and a shard plan made per key range instead of groupings on local
    disk); the legacy BundleBasedDirectRunner runs it here. Same bytes, also where
    60 samples make 3 key ranges (``partition_samples`` 25): no shard spans two,
    and with one range (``partition_samples`` 60) the shards are the default's."""
    from pipelines.beam import graph as beam
    cluster = ["--runner=BundleBasedDirectRunner"]
    assert not beam.runs_locally(cluster)
    raw = make_raw(tmp_path / "raw")
    beam.run(config(raw), str(tmp_path / "out"), cluster)
    assert_same_build(tmp_path / "out", beam_build)
    assert len(read_manifest(beam_build / "manifest.parquet")) == 2

    many = make_many(tmp_path / "many", 60)

    def built(name: str, partition_samples: int, beam_args: list[str]) -> Path:
        shards = ShardConfig(max_samples=8, partition_samples=partition_samples)
        beam.run(BuildConfig(raw_dir=str(many), transcribe=False, shards=shards),
                 str(tmp_path / name), beam_args)
        return tmp_path / name

    ranges = built("ranges", 25, [])
    assert_same_build(built("ranges-cluster", 25, cluster), ranges)
    in_shard: dict[str, set[int]] = {}
    for row in read_manifest(ranges / "manifest.parquet"):
        in_shard.setdefault(row["shard"], set()).add(partition_of(row["key"], 3))
    assert sorted(map(sorted, in_shard.values())) == [[0]] * 3 + [[1]] * 3 + [[2]] * 3
    one = built("one", 60, cluster)
    assert_same_build(one, built("default", ShardConfig().partition_samples, []))
    assert len(read_manifest(one / "manifest.parquet")) == 60
    assert len(list((one / "shards").glob("*.tar"))) == 8  # 60 / 8: cut at 8s alone
