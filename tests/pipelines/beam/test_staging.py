"""Staging the toolkit for remote Beam workers (``pipelines.beam.staging``): which
runners get the wheel, what the wheel holds, and the cluster graph run by
Beam's portable runner on worker processes that have the toolkit only from
the staged wheel, as a Dataflow or Flink worker does."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from pipelines.beam import staging
from pixmo.errors import PixmoError
from tests.pipelines.conftest import assert_same_build, config, make_raw

# The container contract of a Beam worker (what Beam's own boot program does
# in the Python SDK image): fetch the job's staged artifacts, pip-install the
# extra packages, start the SDK harness. Run with ``python -S`` and only the
# environment's site-packages on the path (no .pth files, so not this checkout's
# editable install): ``pixmo`` can come from the staged wheel alone.
BOOT = """#!{python} -S
import sys
sys.path.append({site!r})
import json, subprocess
from pathlib import Path
import grpc
from apache_beam.portability import common_urns
from apache_beam.portability.api import (beam_artifact_api_pb2, beam_artifact_api_pb2_grpc,
    beam_provision_api_pb2, beam_provision_api_pb2_grpc, beam_runner_api_pb2)
from apache_beam.runners.worker.worker_id_interceptor import WorkerIdInterceptor

args = dict(a[2:].split("=", 1) for a in sys.argv[1:])
home = Path({home!r}) / args["id"]
(home / "artifacts").mkdir(parents=True)
meta = [("worker_id", args["id"])]
provision = beam_provision_api_pb2_grpc.ProvisionServiceStub(
    grpc.insecure_channel(args["provision_endpoint"]))
info = provision.GetProvisionInfo(beam_provision_api_pb2.GetProvisionInfoRequest(),
                                  metadata=meta).info
retrieval = beam_artifact_api_pb2_grpc.ArtifactRetrievalServiceStub(
    grpc.insecure_channel(args["artifact_endpoint"]))
staged = []
for artifact in info.dependencies:
    role = beam_runner_api_pb2.ArtifactStagingToRolePayload.FromString(artifact.role_payload)
    path = home / "artifacts" / role.staged_name
    with open(path, "wb") as out:
        for chunk in retrieval.GetArtifact(
                beam_artifact_api_pb2.GetArtifactRequest(artifact=artifact), metadata=meta):
            out.write(chunk.data)
    staged.append(role.staged_name)
order = (home / "artifacts" / "extra_packages.txt").read_text().split()
subprocess.run([sys.executable, "-S", "-m", "pip", "install", "--quiet", "--no-deps",
                "--no-index", "--target", str(home / "site"),
                *(str(home / "artifacts" / name) for name in order)],
               env={{"PYTHONPATH": {site!r}}}, check=True)
sys.path.insert(0, str(home / "site"))
import pixmo
(home / "booted.json").write_text(json.dumps({{"staged": staged, "pixmo": pixmo.__file__}}))
from apache_beam.runners.worker.sdk_worker import SdkHarness
SdkHarness(args["control_endpoint"], worker_id=args["id"]).run()
"""


@pytest.mark.parametrize(("args", "staged"), [
    (["--runner=DataflowRunner", "--project=p"], True),
    (["--runner=apache_beam.runners.portability.flink_runner.FlinkRunner"], True),
    (["--runner=flink", "--environment_type=DOCKER"], True),
    (["--runner=FlinkRunner", "--environment_type=LOOPBACK"], False),
    (["--runner=FnApiRunner", "--direct_running_mode=multi_processing"], False),
    (["--runner=BundleBasedDirectRunner"], False),
    ([], False),
    (["--runner=DataflowRunner", "--extra_package=/x/mine.whl"], False),
    (["--runner=DataflowRunner", "--setup_file=./setup.py"], False),
    (["--runner=DataflowRunner", "--sdk_container_image=me/pixmo:1"], False),
])
def test_which_runners_get_the_wheel(args, staged):
    assert staging.needs_staging(args) is staged


def test_for_workers_adds_the_wheel_once(tmp_path, monkeypatch):
    monkeypatch.setattr(staging, "wheel", lambda: tmp_path / "pixmo.whl")
    args = ["--runner=DataflowRunner", "--project=p"]
    assert staging.for_workers(args) == [*args, f"--extra_package={tmp_path / 'pixmo.whl'}"]
    assert staging.for_workers(["--runner=FnApiRunner"]) == ["--runner=FnApiRunner"]


def test_the_wheel_holds_every_package_and_the_schemas(tmp_path):
    import tomllib

    first = staging.wheel(cache=tmp_path)
    assert staging.wheel(cache=tmp_path) == first  # cached by the tree's hash
    assert first.parent.name == staging.tree_hash()
    names = set(zipfile.ZipFile(first).namelist())
    project = tomllib.loads((staging.SOURCE / "pyproject.toml").read_text())
    for package in project["tool"]["setuptools"]["packages"]:
        assert f"{package.replace('.', '/')}/__init__.py" in names or package == "pixmo.schemas"
    schemas = sorted(p.name for p in (staging.SOURCE / "schemas").glob("*.json"))
    assert schemas and all(f"pixmo/schemas/{name}" in names for name in schemas)
    assert "pipelines/beam/staging.py" in names
    assert not any("__pycache__" in name for name in names)


def test_a_wheel_that_cannot_be_built_is_one_line(tmp_path):
    with pytest.raises(PixmoError, match="is not its source tree; pass --extra_package"):
        staging.wheel(root=tmp_path, cache=tmp_path / "cache")
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'broken\n")
    with pytest.raises(PixmoError, match="cannot build the toolkit's wheel") as error:
        staging.wheel(root=tmp_path, cache=tmp_path / "cache")
    assert "\n" not in str(error.value)


def test_cluster_graph_on_remote_workers_with_the_staged_wheel(beam_build, tmp_path,
                                                               monkeypatch):
    """Beam's portable runner (the runner FlinkRunner is) with its job server in
    this process and an EXTERNAL environment: a worker pool starts two SDK
    workers, each its own process through ``BOOT``, which installs what the job
    staged. Every DoFn is pickled, shipped and run there, bundles split between
    the two; same bytes as the local build."""
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.worker.worker_pool_main import BeamFnExternalWorkerPoolServicer

    from pipelines.beam import graph

    run_api = fn_runner.FnApiRunner.run_via_runner_api

    def two_workers(runner, *args):  # the job server's runner reads no worker count
        runner._num_workers = 2
        return run_api(runner, *args)

    monkeypatch.setattr(fn_runner.FnApiRunner, "run_via_runner_api", two_workers)
    built, real = [], staging.wheel
    monkeypatch.setattr(staging, "CACHE", tmp_path / "wheels")
    monkeypatch.setattr(staging, "wheel", lambda: built.append(real()) or built[-1])
    boot = tmp_path / "boot.py"
    boot.write_text(BOOT.format(python=sys.executable, site=sysconfig.get_paths()["purelib"],
                                home=str(tmp_path / "workers")))
    boot.chmod(0o755)
    address, server = BeamFnExternalWorkerPoolServicer.start(
        use_process=True, port=0, container_executable=str(boot))
    try:
        args = ["--runner=PortableRunner", "--job_endpoint=embed",
                "--environment_type=EXTERNAL", f"--environment_config={address}"]
        assert not graph.runs_locally(args) and staging.needs_staging(args)
        raw = make_raw(tmp_path / "raw")
        graph.run(config(raw), str(tmp_path / "out"), args)
    finally:
        server.stop(0)
    assert_same_build(tmp_path / "out", beam_build)
    assert len(built) == 1
    booted = [json.loads(p.read_text()) for p in (tmp_path / "workers").glob("*/booted.json")]
    assert len(booted) == 2  # each worker process installed the wheel, then ran bundles
    for worker in booted:
        assert built[0].name in worker["staged"]
        assert Path(worker["pixmo"]).is_relative_to(tmp_path / "workers")


def test_worker_python_cannot_import_this_checkout(tmp_path):
    """The premise of the test above: BOOT's interpreter finds ``apache_beam``
    but not ``pixmo``, unless the staged wheel is installed."""
    site = sysconfig.get_paths()["purelib"]
    done = subprocess.run(
        [sys.executable, "-S", "-c", f"import sys; sys.path.append({site!r}); "
         "import apache_beam; import pixmo"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 1 and "No module named 'pixmo'" in done.stderr
