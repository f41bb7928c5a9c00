"""`pixmo inspect` and `pixmo validate` on real dataset directories, including
each kind of damage validate must catch."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from pipelines.cli import main
from pixmo.dataset.format import ShardSample
from pixmo.dataset.reader import committed_shards
from pixmo.dataset.tables import read_manifest, write_manifest
from pixmo.dataset.verify import summarize, verify
from pixmo.dataset.writer import ShardConfig, TarShard, write_dataset
from tests.conftest import make_sample

REJECTS = [{"source": "points.jsonl", "record": "4", "stage": "points", "reason": "out_of_bounds",
            "detail": "x=900 beyond width 640"},
           {"source": "captions.jsonl", "record": "9", "stage": "qc", "reason": "silence",
            "detail": "rms -70 dBFS"}]


@pytest.fixture
def dataset(tmp_path, samples) -> Path:
    write_dataset(tmp_path, samples, name="unit", rejects=REJECTS,
                  config=ShardConfig(max_samples=10))
    return tmp_path


def test_intact_dataset_validates(dataset, capsys):
    assert verify(dataset) == []
    assert main(["validate", str(dataset)]) == 0
    assert capsys.readouterr().out.strip() == f"{dataset}: ok"


def test_flipped_byte_in_tar_is_detected(dataset, capsys):
    tar = dataset / "shards/pixmo-000001.tar"
    data = bytearray(tar.read_bytes())
    data[2000] ^= 0x01  # inside the first sample's JSON payload
    tar.write_bytes(bytes(data))
    problems = verify(dataset)
    assert any(p.startswith("shards/pixmo-000001.tar: sha256 ") and "does not match stats" in p
               for p in problems), problems
    assert main(["validate", str(dataset)]) == 1
    out = capsys.readouterr().out
    assert "problem(s)" in out and "pixmo-000001.tar: sha256" in out


def test_sample_json_breaking_schema_is_detected(dataset):
    # rewrite shard 2 with the low-level writer, which does not check schemas
    stats = committed_shards(dataset)[2]
    good = make_sample(100)
    broken = dict(good.json)
    broken["points"] = [{"label": "square", "points": [[150.0, 20.0]], "count": 1,
                         "collection_method": "pointing", "annotators": ["a1"]}]
    shard = TarShard(dataset / "shards", stats.index)
    shard.add(ShardSample(good.key, broken, good.files))
    shard.commit()
    problems = verify(dataset)
    assert (f"shards/pixmo-000002.tar, record {good.key}, field points[0].points[0][0]: must be "
            "smaller than or equal to 100 (schema sample)") in problems


def test_manifest_row_with_no_sample_is_detected(dataset):
    rows = read_manifest(dataset / "manifest.parquet")
    ghost = dict(rows[0], key="ghost0000000000000000")
    write_manifest(rows + [ghost], dataset / "manifest.parquet")
    assert verify(dataset) == [
        "manifest.parquet, record ghost0000000000000000: no sample with this key in any shard"]


def test_sample_missing_from_manifest_and_wrong_counts(dataset):
    rows = read_manifest(dataset / "manifest.parquet")
    rows[1]["captions"] = 5
    write_manifest(rows[1:], dataset / "manifest.parquet")
    problems = verify(dataset)
    assert f"manifest.parquet, record {rows[1]['key']}: field captions: 5, sample has 1" in problems
    assert f"manifest.parquet: sample {rows[0]['key']} (pixmo-000000.tar) has no manifest row" \
        in problems


def test_unfinished_shard_and_leftovers_are_reported(dataset):
    (dataset / "shards/pixmo-000003.tar").write_bytes(b"\0" * 1024)
    (dataset / "shards/pixmo-000004.tar.123.partial").write_bytes(b"x")
    (dataset / "shards/pixmo-000001.json").unlink()
    problems = verify(dataset)
    assert "shards/pixmo-000003.tar: no commit marker (unfinished shard)" in problems
    assert "shards/pixmo-000001.tar: no commit marker (unfinished shard)" in problems
    assert "shards/pixmo-000004.tar.123.partial: leftover of an interrupted writer" in problems
    assert "dataset.json: lists pixmo-000001.tar, which is not a committed shard" in problems
    assert any("not contiguous" in p for p in problems)


def test_dataset_json_mismatch(dataset):
    description = json.loads((dataset / "dataset.json").read_text())
    description["counts"]["samples"] = 99
    (dataset / "dataset.json").write_text(json.dumps(description))
    assert verify(dataset) == ["dataset.json: counts.samples 99, shards hold 23"]


def test_image_bytes_must_match_recorded_hash(tmp_path):
    a, b = make_sample(1), make_sample(2)
    swapped = ShardSample(a.key, a.json, b.files)
    shard = TarShard(tmp_path / "shards", 0)
    shard.add(swapped)
    stats = shard.commit()
    write_manifest(shard.rows, tmp_path / "manifest.parquet")
    from pixmo.dataset.tables import describe, write_dataset_json

    write_dataset_json(describe("x", [stats]), tmp_path / "dataset.json")
    problems = verify(tmp_path)
    assert len(problems) == 1 and "field image.sha256: image bytes hash to" in problems[0]


def test_inspect_summarizes(dataset, capsys):
    summary = summarize(dataset)
    assert summary.samples == 23 and len(summary.shards) == 3
    assert summary.counts == {"transcripts": 0, "captions": 23, "points": 23, "qa": 0}
    assert summary.rejects_by_reason == {"out_of_bounds": 1, "silence": 1}
    assert summary.collection_methods == {"pointing": 23}
    assert main(["inspect", str(dataset)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("dataset unit: 23 samples in 3 shards")
    assert "pixmo-000002.tar        3" in out
    assert "out_of_bounds        1" in out
    assert f'"key": "{summary.example["key"]}"' in out


def _keep_first_sample_only(tar: Path) -> None:
    """Rewrite a shard's tar with its first sample's members only (marker untouched)."""
    with tarfile.open(tar) as src:
        members = src.getmembers()
        first = [(m, src.extractfile(m).read()) for m in members
                 if m.name.split(".")[0] == members[0].name.split(".")[0]]
    with tarfile.open(tar, "w", format=tarfile.PAX_FORMAT) as dst:
        for member, data in first:
            dst.addfile(member, io.BytesIO(data))


def test_inspect_reads_no_shard_but_the_first_sample(dataset, capsys):
    """Counts come from the markers and the rejects' reason column: with every
    tar gone but the first sample, inspect prints what it printed before."""
    assert main(["inspect", str(dataset)]) == 0
    before = capsys.readouterr().out
    for tar in sorted((dataset / "shards").glob("*.tar"))[1:]:
        tar.unlink()
    _keep_first_sample_only(dataset / "shards/pixmo-000000.tar")
    assert main(["inspect", str(dataset)]) == 0
    assert capsys.readouterr().out == before


def test_inspect_reads_the_samples_of_a_marker_without_the_counts(dataset):
    """A marker written before point methods and failures were counted: that
    shard's samples are read instead, and the counts come out the same."""
    expected = summarize(dataset)
    marker = dataset / "shards/pixmo-000001.json"
    old = {k: v for k, v in json.loads(marker.read_text()).items()
           if k not in ("point_methods", "failures")}
    marker.write_text(json.dumps(old))
    summary = summarize(dataset)
    assert summary.shards[1].point_methods is None
    assert (summary.collection_methods, summary.failures_by_reason, summary.counts) == (
        expected.collection_methods, expected.failures_by_reason, expected.counts)
    assert summary.collection_methods == {"pointing": 23}


def test_cli_reports_user_error_in_one_line(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"pixmo inspect: {tmp_path / 'nope'}: not a dataset directory (no shards/ " \
                  "and no dataset.json)"


def test_show_draws_one_sample(dataset, tmp_path, capsys):
    from PIL import Image

    from pixmo.dataset.verify import find_sample

    key = read_manifest(dataset / "manifest.parquet")[15]["key"]
    assert find_sample(dataset, key).key == key
    out = tmp_path / "show.png"
    assert main(["show", str(dataset), "--key", key, "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out} (1 label set)"
    with Image.open(out) as drawn:
        assert drawn.width > 32 and drawn.height >= 24  # image plus legend
    assert main(["show", str(dataset), "--key", "missing", "--out", str(out)]) == 2
    assert "record missing: no sample with this key" in capsys.readouterr().err
