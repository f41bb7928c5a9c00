"""A Ray cluster of two nodes on this machine, each its own ``ray start`` process tree with
one CPU, its own object store and its own temp dir: ``pixmo build --engine ray --ray-address``
against it writes, to a local folder and to S3 (a moto server on 127.0.0.1), the bytes a local
Beam build writes; a build whose worker node is killed (SIGKILL) mid-build, then re-run on a
new worker node, ends the same."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pytest
import requests

from pipelines.cli import main
from pixmo.dataset.tables import read_dataset_json
from tests.paths import REPO
from tests.pipelines.conftest import assert_same_build, make_raw
from tests.pixmo.build.test_resume import make_points_raw

BIN = Path(sys.executable).parent
DEADLINE_S = 180  # for each wait on the cluster; a healthy run needs a small part of it
NODE_OPTIONS = ["--num-cpus", "1", "--object-store-memory", str(96 << 20), "--block",
                "--disable-usage-stats", "--min-worker-port", "0", "--max-worker-port", "0"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ports(*names: str) -> list[str]:
    """A free port for each of a node's servers (two nodes on one machine must not share
    Ray's default ports, nor meet another Ray this machine runs)."""
    return [arg for name in names for arg in (f"--{name}", str(_free_port()))]


class Node:
    """One ``ray start --block`` and every process it starts. Ray's workers take a process
    group of their own and a title (``ray::IDLE``) for their command line, and outlive a
    killed parent; what they all keep is the node's environment, which names the node."""

    TAG = "PIXMO_TEST_RAY_NODE"

    def __init__(self, temp_dir: Path, env: dict[str, str], *args: str) -> None:
        self.temp_dir, self.port = temp_dir, _free_port()  # its raylet's, which ray.nodes() shows
        ports = _ports("object-manager-port", "runtime-env-agent-port", "metrics-export-port",
                       "dashboard-agent-listen-port", "dashboard-agent-grpc-port")
        with open(temp_dir.with_suffix(".log"), "ab") as log:
            self.proc = subprocess.Popen(
                [str(BIN / "ray"), "start", *args, "--temp-dir", str(temp_dir),
                 "--node-manager-port", str(self.port), *ports, *NODE_OPTIONS],
                env={**env, self.TAG: str(temp_dir)}, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL)

    def processes(self) -> list[int]:
        """The node's live processes (not yet-unreaped ones)."""
        tag = f"{self.TAG}={self.temp_dir}".encode()
        mine = []
        for entry in Path("/proc").iterdir():
            try:
                alive = entry.name.isdigit() and (entry / "stat").read_bytes().rsplit(
                    b")", 1)[1].split()[0] != b"Z"
                if alive and tag in (entry / "environ").read_bytes().split(b"\0"):
                    mine.append(int(entry.name))
            except OSError:
                continue  # ended meanwhile
        return mine

    def kill(self) -> None:
        """SIGKILL every process of the node, none of any other node's; again, until none is
        left (a process can start another before it is killed)."""
        deadline = time.monotonic() + DEADLINE_S
        while pids := self.processes():
            assert time.monotonic() < deadline, f"still alive: {pids}"
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
        self.proc.wait()


NODES = """\
import json, sys, time
import ray
ray.init(address=sys.argv[1], log_to_driver=False)
deadline, want = time.monotonic() + float(sys.argv[2]), sorted(map(int, sys.argv[3:]))
while True:
    alive = [n for n in ray.nodes() if n["Alive"]]
    if sorted(n["NodeManagerPort"] for n in alive) == want or time.monotonic() > deadline:
        break
    time.sleep(0.2)
print(json.dumps([{"port": n["NodeManagerPort"], **n["Resources"]} for n in alive]))
"""


class Cluster:
    """A head node and worker nodes on 127.0.0.1, each with one CPU."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root, self.env = root, env
        self.nodes: list[Node] = []
        self.builds: list[subprocess.Popen] = []
        self.address = f"127.0.0.1:{_free_port()}"

    def start(self) -> None:
        self.nodes.append(Node(self.root / "h", self.env, "--head", "--include-dashboard=false",
                               "--port", self.address.split(":")[1],
                               *_ports("ray-client-server-port", "dashboard-port")))
        self.add_worker()

    def add_worker(self) -> None:
        """Starts a worker node; returns once the head and it are the alive nodes."""
        self.nodes.append(Node(self.root / f"w{len(self.nodes)}", self.env,
                               "--address", self.address))
        alive = {node["port"]: node["CPU"] for node in self.alive_nodes()}
        assert alive == {self.nodes[0].port: 1, self.nodes[-1].port: 1}

    def alive_nodes(self) -> list[dict[str, float]]:
        """``ray.nodes()`` once only the head and the last worker node are alive (a driver in
        a child process, which leaves no Ray in this one), or the deadline passes."""
        ports = [str(node.port) for node in (self.nodes[0], self.nodes[-1])]
        done = subprocess.run([sys.executable, "-c", NODES, self.address, str(DEADLINE_S),
                               *ports], env=self.env, capture_output=True, text=True,
                              timeout=DEADLINE_S + 60)
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.splitlines()[-1])

    def stop(self) -> None:
        for proc in self.builds:  # a test that failed may leave one running
            proc.kill()
            proc.wait()
        for node in self.nodes:
            node.kill()


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    # moto keeps its buckets in this process, shared by every server it starts: begin and
    # end empty, so no other test sees this module's buckets
    requests.post(f"{endpoint}/moto-api/reset", timeout=30).raise_for_status()
    yield endpoint
    requests.post(f"{endpoint}/moto-api/reset", timeout=30).raise_for_status()
    server.stop()


@pytest.fixture(scope="module")
def cluster(moto_endpoint) -> Iterator[Cluster]:
    """Every node, and the builds (children of this process), reach the moto server through
    the environment. The temp dir is short: Ray's socket paths have a length limit."""
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled",
           "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "FSSPEC_S3_ENDPOINT_URL": moto_endpoint,
           "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    cluster = Cluster(Path(tempfile.mkdtemp(prefix="rc", dir="/tmp")), env)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(cluster.root, ignore_errors=True)


def _args(raw: Path, out: str, *extra: str) -> list[str]:
    return ["build", "--raw", str(raw), "--out", out, "--shard-samples", "1", *extra]


def _start_build(cluster: Cluster, args: list[str]) -> subprocess.Popen:
    """``pixmo build ARGS --engine ray --ray-address`` the cluster, as a user's shell runs it."""
    with open(cluster.root / "build.log", "ab") as log:
        cluster.builds.append(subprocess.Popen(
            [str(BIN / "pixmo"), *args, "--engine", "ray", "--ray-address", cluster.address],
            env=cluster.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
    return cluster.builds[-1]


def _log(cluster: Cluster) -> str:
    return (cluster.root / "build.log").read_text(errors="replace")[-3000:]


def _ended(proc: subprocess.Popen, cluster: Cluster) -> int:
    """The build's exit status: it fails or finishes, it does not hang."""
    try:
        return proc.wait(timeout=DEADLINE_S)
    except subprocess.TimeoutExpired:
        says = f"the build still runs after {DEADLINE_S} s:\n{_log(cluster)}"
        raise AssertionError(says) from None


def _ray_build(cluster: Cluster, args: list[str]) -> None:
    assert _ended(_start_build(cluster, args), cluster) == 0, _log(cluster)


def _s3(endpoint: str):
    return fsspec.filesystem("s3", key="testing", secret="testing",
                             client_kwargs={"endpoint_url": endpoint}, skip_instance_cache=True)


def test_a_two_node_cluster_builds_what_beam_builds_to_a_folder_and_to_s3(
        cluster, moto_endpoint, tmp_path):
    """Images and speech (Whisper actors) on two nodes, every kind of bad record."""
    raw = make_raw(tmp_path / "raw")
    speech = ["--min-speech-s", "5", "--device", "cpu"]
    assert main(_args(raw, str(tmp_path / "beam"), *speech)) == 0

    _ray_build(cluster, _args(raw, str(tmp_path / "ray"), *speech))
    assert_same_build(tmp_path / "ray", tmp_path / "beam")
    assert read_dataset_json(tmp_path / "ray/dataset.json")["engine"] == "ray"

    s3 = _s3(moto_endpoint)
    s3.mkdir("data")
    _ray_build(cluster, _args(raw, "s3://data/out", *speech))
    assert [key for key in s3.find("data/out") if key.endswith(".partial")] == []
    s3.get("data/out/", str(tmp_path / "from_s3"), recursive=True)
    assert_same_build(tmp_path / "from_s3", tmp_path / "beam")


def _busy(node: Node) -> bool:
    """Whether a worker of ``node`` runs a task of the build: Ray titles a worker by the task
    it runs (``ray::MapBatches(images)``), an idle one ``ray::IDLE``."""
    for pid in node.processes():
        with contextlib.suppress(OSError):
            title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
            if title.startswith("ray::") and title[5:] not in IDLE and title[5] != "_":
                return True
    return False


IDLE = ("IDLE", "DashboardAgent", "RuntimeEnvAgent")


def _mid_build(out: Path, proc: subprocess.Popen, worker: Node) -> list[str]:
    """Polls until the worker node runs a task of the build, or a shard is committed,
    before the build ends; the committed shards then."""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline and proc.poll() is None:
        markers = sorted(p.name for p in (out / "shards").glob("*.json"))
        if (markers or _busy(worker)) and not (out / "dataset.json").exists():
            return markers
        time.sleep(0.02)
    raise AssertionError(f"the build ended (exit {proc.poll()}) before it could be killed")


def test_a_build_whose_worker_node_is_killed_resumes_to_the_same_bytes(cluster, tmp_path):
    """Killed once it runs a task of the build or a shard is committed: the build fails, or
    ends on the head node alone; re-run (``--mode resume``) with a new worker node, it keeps
    the shards it finds committed and ends with Beam's bytes."""
    raw = make_points_raw(tmp_path / "raw", 60)
    args = _args(raw, str(tmp_path / "ray"), "--no-transcribe")
    assert main(_args(raw, str(tmp_path / "beam"), "--no-transcribe")) == 0

    proc, worker = _start_build(cluster, args), cluster.nodes[-1]
    assert len(_mid_build(tmp_path / "ray", proc, worker)) < 60
    worker.kill()
    assert worker.processes() == []
    _ended(proc, cluster)  # failed, or finished without the worker node
    committed = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "ray/shards").glob("*.tar")
                 if p.with_suffix(".json").exists()}

    cluster.add_worker()  # and the killed one is no longer alive
    _ray_build(cluster, args)
    assert_same_build(tmp_path / "ray", tmp_path / "beam")
    assert {name: (tmp_path / "ray/shards" / name).stat().st_mtime_ns
            for name in committed} == committed
