"""Raw input and dataset output behind fsspec URLs: the ``Folder`` operations,
a Beam build from memory:// to memory://, file:// URLs, and S3 (real s3fs
against a moto server on 127.0.0.1) with a build killed mid-upload and
resumed in the same bucket."""

from __future__ import annotations

import hashlib
import logging
import uuid
from pathlib import Path

import fsspec
import pytest
import requests

from pipelines.cli import main
from pixmo.atomic import atomic_open
from pixmo.dataset.tables import read_dataset_json, read_manifest, read_rejects
from pixmo.dataset.verify import verify
from pixmo.fetch import FetchConfig, FetchError
from pixmo.remote import Folder, file_sha256, is_remote, open_url, read_url
from tests.http_server import LocalServer, Reply
from tests.pixmo.build.test_resume import kill, make_points_raw, start_held_build


def _args(raw: str, out: str, *extra: str) -> list[str]:
    return ["build", "--raw", raw, "--out", out, "--no-transcribe", "--shard-samples", "2",
            *extra]


def _download(url: str, local: Path) -> Path:
    fs, root = fsspec.core.url_to_fs(url)
    fs.invalidate_cache()
    fs.get(f"{root}/", str(local), recursive=True)
    return local


def _same_dataset(ours: Path, reference: Path) -> None:
    """Same shard bytes, markers, manifest, rejects and ledger as a local build."""
    assert verify(ours) == []
    tars = sorted(p.name for p in (reference / "shards").iterdir())
    assert sorted(p.name for p in (ours / "shards").iterdir()) == tars
    for name in tars:
        assert (ours / "shards" / name).read_bytes() == (reference / "shards" / name).read_bytes()
    assert read_manifest(ours / "manifest.parquet") == read_manifest(
        reference / "manifest.parquet")
    assert read_rejects(ours / "rejects.parquet") == read_rejects(reference / "rejects.parquet")
    ledger = [read_dataset_json(d / "dataset.json")["ledger"] for d in (ours, reference)]
    assert ledger[0] == ledger[1]


@pytest.fixture(scope="module")
def raw_and_reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("remote")
    raw = make_points_raw(root / "raw", 9)
    assert main(_args(str(raw), str(root / "reference"))) == 0
    return raw, root / "reference"


def test_is_remote():
    assert is_remote("s3://bucket/x") and is_remote("memory://x")
    assert not is_remote("/data/x") and not is_remote("file:///data/x")


@pytest.mark.parametrize("url", ["local", "memory"])
def test_folder_operations(url, tmp_path):
    base = str(tmp_path / "f") if url == "local" else f"memory://folder-{uuid.uuid4().hex}"
    folder = Folder(base)
    folder.makedirs("shards")
    folder.write_bytes("shards/a.json", b'{"a": 1}')
    src = tmp_path / "src.tar"
    src.write_bytes(b"x" * 3000)
    folder.put(src, "shards/a.tar")
    assert folder.glob("shards/*") == ["shards/a.json", "shards/a.tar"]  # no temporary names
    assert folder.read_bytes("shards/a.json") == b'{"a": 1}'
    assert folder.size("shards/a.tar") == 3000 and folder.is_file("shards/a.tar")
    assert folder.sha256("shards/a.tar") == hashlib.sha256(b"x" * 3000).hexdigest()
    assert file_sha256(f"{base}/shards/a.tar") == folder.sha256("shards/a.tar")
    with folder.local_copy("shards/a.tar") as path:
        assert Path(path).read_bytes() == b"x" * 3000 and path.endswith("a.tar")
    with folder.local_target("manifest.parquet") as path:
        Path(path).write_bytes(b"table")
    assert folder.read_bytes("manifest.parquet") == b"table"
    with pytest.raises(RuntimeError), folder.local_target("half.json") as path, \
            atomic_open(path) as fh:  # as the manifest and dataset.json writers do
        fh.write(b"{")
        raise RuntimeError("the writer failed")
    assert not folder.is_file("half.json")  # a failed write publishes nothing
    folder.remove("shards/a.json")
    folder.remove("shards/never-there.json")
    assert folder.glob("shards/*") == ["shards/a.tar"]
    folder.remove_tree("shards")
    assert folder.glob("shards/*") == []
    with pytest.raises(FileNotFoundError):
        folder.read_bytes("shards/a.tar")


def test_open_url_and_read_url_take_paths_file_and_fsspec_urls(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"local bytes")
    memory = f"memory://open-{uuid.uuid4().hex}/a.bin"
    fsspec.filesystem("memory").pipe_file(fsspec.core.url_to_fs(memory)[1], b"memory bytes")
    for url, data in [(tmp_path / "a.bin", b"local bytes"),
                      (f"file://{tmp_path}/a.bin", b"local bytes"), (memory, b"memory bytes")]:
        with open_url(url) as fh:
            assert fh.read(5) == data[:5]
        assert read_url(url) == data
    with pytest.raises(FileNotFoundError):
        read_url(tmp_path / "missing.bin")


def test_read_url_fetches_http_with_the_downloaders_limits():
    with LocalServer() as server:
        url = server.route("/a.bin", Reply(body=b"x" * 100))
        assert read_url(url) == b"x" * 100
        with pytest.raises(FetchError, match="body of 100 bytes exceeds max_bytes 10"):
            read_url(url, FetchConfig(max_bytes=10))
        assert server.hits["/a.bin"] == 2  # the oversized body was refused, not retried


def _copy_to(local: Path, url: str) -> None:
    fs, root = fsspec.core.url_to_fs(url)
    fs.put(f"{local}/", root, recursive=True)


def test_beam_build_from_and_to_memory_urls(raw_and_reference, tmp_path):
    raw, reference = raw_and_reference
    raw_url, out_url = (f"memory://{name}-{uuid.uuid4().hex}" for name in ("raw", "out"))
    _copy_to(raw, raw_url)
    assert main(_args(raw_url, out_url, "--direct_running_mode=in_memory")) == 0
    _same_dataset(_download(out_url, tmp_path / "first"), reference)
    assert read_dataset_json(tmp_path / "first/dataset.json")["build_config"]["raw_dir"] == \
        raw_url
    fs, root = fsspec.core.url_to_fs(out_url)
    created = {p: fs.info(p)["created"] for p in fs.glob(f"{root}/shards/*.tar")}

    assert main(_args(raw_url, out_url, "--direct_running_mode=in_memory")) == 0  # resume
    assert {p: fs.info(p)["created"] for p in fs.glob(f"{root}/shards/*.tar")} == created
    _same_dataset(_download(out_url, tmp_path / "second"), reference)


def test_build_with_file_urls(raw_and_reference, tmp_path):
    raw, reference = raw_and_reference
    assert main(_args(f"file://{raw}", f"file://{tmp_path / 'out'}")) == 0
    _same_dataset(tmp_path / "out", reference)


@pytest.fixture
def s3(monkeypatch):
    """A moto S3 server on 127.0.0.1, reachable from this process (fsspec
    config) and from child processes (environment)."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    creds = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
             "AWS_DEFAULT_REGION": "us-east-1"}
    for key, value in creds.items():
        monkeypatch.setenv(key, value)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    # moto keeps its buckets in this process, shared by every server it starts (another
    # module's included): each test begins with none
    requests.post(f"{endpoint}/moto-api/reset", timeout=30).raise_for_status()
    monkeypatch.setenv("FSSPEC_S3_ENDPOINT_URL", endpoint)
    monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": endpoint})
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint)
    yield client
    fsspec.filesystem("s3").clear_instance_cache()
    server.stop()


def _versions(client, bucket: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket):
        for version in page.get("Versions", []):
            out[version["Key"]] = out.get(version["Key"], 0) + 1
    return out


BUCKET = "killed-upload"


def test_s3_build_killed_during_upload_then_resumed(s3, tmp_path):
    """(A bucket of its own name: every version in it must be this build's.)"""
    raw = make_points_raw(tmp_path / "raw", 80)
    reference = tmp_path / "reference"
    assert main(_args(str(raw), str(reference))) == 0
    for bucket in ("raw", BUCKET):
        s3.create_bucket(Bucket=bucket)
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    _copy_to(raw, "s3://raw/set")

    # held once a shard is committed and the next one's tar is uploaded, not its marker
    proc = start_held_build(tmp_path, """
        from pixmo import remote

        put = remote.Folder.put
        markers = []

        def put_or_hold(self, local_file, rel):
            marker = rel.startswith("shards/") and rel.endswith(".json")
            if marker and markers:
                hold()
            put(self, local_file, rel)
            if marker:
                markers.append(rel)

        remote.Folder.put = put_or_hold
        """, _args("s3://raw/set", f"s3://{BUCKET}/out"))
    kill(proc)
    uploaded = _versions(s3, BUCKET)
    at_kill = {k for k in uploaded if k.startswith("out/shards/") and k.endswith(".json")}
    assert at_kill, "the kill came before any shard was committed"
    assert "out/dataset.json" not in uploaded, "the kill came after the build finished"
    assert len(at_kill) < 40
    unmarked = {k for k in uploaded if k.startswith("out/shards/") and k.endswith(".tar")
                and k.replace(".tar", ".json") not in at_kill}
    assert len(unmarked) == 1  # killed mid-upload: a tar without its marker

    assert main(_args("s3://raw/set", f"s3://{BUCKET}/out")) == 0
    _same_dataset(_download(f"s3://{BUCKET}/out", tmp_path / "resumed"), reference)
    versions = _versions(s3, BUCKET)
    for marker in at_kill:  # shards committed before the kill were not uploaded again
        assert versions[marker] == 1 and versions[marker.replace(".json", ".tar")] == 1
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix="out/").get("Contents", [])
    assert not [o["Key"] for o in listed if o["Key"].endswith(".partial")]


def test_file_sha256_reads_past_one_chunk(tmp_path):
    data = bytes(range(256)) * 8193  # two 1 MiB chunks and a bit
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    want = hashlib.sha256(data).hexdigest()
    assert file_sha256(path) == file_sha256(f"file://{path}") == want
