"""A build killed with SIGKILL while writing shards, then re-run with the same
arguments, ends exactly as an uninterrupted run; extend adds new shards."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
from pathlib import Path

from PIL import Image

from pipelines.cli import main
from pixmo.dataset.reader import committed_shards, iter_samples
from pixmo.dataset.tables import read_dataset_json, read_rejects
from pixmo.dataset.verify import verify
from tests.paths import REPO


def make_points_raw(root: Path, n: int, first: int = 0) -> Path:
    (root / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(first, first + n):
        buf = io.BytesIO()
        Image.new("RGB", (48, 32), (i % 251, (7 * i) % 253, 99)).save(buf, format="PNG")
        (root / f"images/{i:04d}.png").write_bytes(buf.getvalue())
        lines.append({"image": f"images/{i:04d}.png", "label": "dot", "units": "percent",
                      "points": [{"x": 10 + i % 80, "y": 50}], "annotator": "a1"})
    lines.append({"image": "images/none.png", "label": "dot", "units": "percent",
                  "points": [], "annotator": "a1"})
    (root / "points.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return root


def _build_args(raw: Path, out: Path) -> list[str]:
    return ["build", "--raw", str(raw), "--out", str(out), "--no-transcribe",
            "--shard-samples", "2"]


def _snapshot(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "shards").iterdir())}


HELD_BUILD = """\
import sys
sys.path[:0] = [{repo!r}]
from pipelines.cli import main


def hold():
    print("held", flush=True)
    sys.stdin.readline()  # until the test kills this process


"""


def start_held_build(tmp_path: Path, patch: str, args: list[str]) -> subprocess.Popen:
    """``pixmo build args`` in a child process, with ``patch`` run first: it wraps a
    function of the build so that the child calls ``hold()`` at a chosen point, where it
    prints "held" and waits until it is killed. Returns once the child is held, so a kill
    lands at that point however fast or slow the machine is."""
    script = tmp_path / "held_build.py"
    script.write_text(HELD_BUILD.format(repo=str(REPO)) + textwrap.dedent(patch)
                      + "\nsys.exit(main(sys.argv[1:]))\n")
    log = tmp_path / "held_build.log"
    with open(log, "w") as stderr:
        proc = subprocess.Popen([sys.executable, str(script), *args], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=stderr, text=True)
    for line in proc.stdout:
        if line.strip() == "held":
            return proc
    proc.wait()
    raise AssertionError(f"the build ended (exit {proc.returncode}) before it was held:\n"
                         + log.read_text()[-3000:])


def kill(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.communicate()


def test_kill_during_shard_writing_then_resume(tmp_path):
    raw = make_points_raw(tmp_path / "raw", 120)
    reference = tmp_path / "reference"
    assert main(_build_args(raw, reference)) == 0

    out, spill = tmp_path / "out", tmp_path / "spill"
    spill.mkdir()
    # held once a shard is committed and the next one has its first sample
    proc = start_held_build(tmp_path, """
        from pixmo.dataset import writer as shards
        commit, add = shards.TarShard.commit, shards.TarShard.add
        committed = []

        def commit_and_note(self):
            stats = commit(self)
            committed.append(stats.shard)
            return stats

        def add_then_hold(self, sample):
            add(self, sample)
            if committed:
                hold()

        shards.TarShard.commit, shards.TarShard.add = commit_and_note, add_then_hold
        """, [*_build_args(raw, out), "--shuffle-dir", str(spill)])
    kill(proc)
    committed_at_kill = {s.shard: (out / "shards" / s.shard).stat().st_mtime_ns
                         for s in committed_shards(out)}
    assert committed_at_kill, "the kill came before any shard was committed"
    assert not (out / "dataset.json").exists(), "the kill came after the build finished"
    assert len(committed_at_kill) < 60
    assert len(list((out / "shards").glob("*.partial"))) == 1  # killed mid-shard
    assert len(list(spill.iterdir())) == 1  # the killed build's spill folder

    assert main([*_build_args(raw, out), "--shuffle-dir", str(spill)]) == 0
    assert list(spill.iterdir()) == []  # removed by the next build, with its own
    assert verify(out) == []
    assert _snapshot(out) == _snapshot(reference)  # same shards, same bytes, same count
    assert [s.key for s in iter_samples(out)] == [s.key for s in iter_samples(reference)]
    for shard, mtime in committed_at_kill.items():  # committed shards were not rewritten
        assert (out / "shards" / shard).stat().st_mtime_ns == mtime
    assert read_rejects(out / "rejects.parquet") == read_rejects(reference / "rejects.parquet")


def test_rerun_of_finished_build_changes_nothing(tmp_path):
    raw = make_points_raw(tmp_path / "raw", 9)
    out = tmp_path / "out"
    assert main(_build_args(raw, out)) == 0
    before = {p.name: p.stat().st_mtime_ns for p in (out / "shards").glob("*.tar")}
    assert main(_build_args(raw, out)) == 0
    assert {p.name: p.stat().st_mtime_ns for p in (out / "shards").glob("*.tar")} == before
    assert main([*_build_args(raw, out), "--mode", "overwrite"]) == 0
    after = {p.name: p.stat().st_mtime_ns for p in (out / "shards").glob("*.tar")}
    assert after.keys() == before.keys() and all(after[k] != before[k] for k in before)
    assert verify(out) == []


def test_extend_adds_new_shards(tmp_path):
    out = tmp_path / "out"
    assert main(_build_args(make_points_raw(tmp_path / "raw1", 5), out)) == 0
    first = _snapshot(out)
    raw2 = make_points_raw(tmp_path / "raw2", 4, first=3)  # images 3 and 4 are already in
    assert main([*_build_args(raw2, out), "--mode", "extend"]) == 0
    assert verify(out) == []
    stats = committed_shards(out)
    assert [s.index for s in stats] == [0, 1, 2, 3]  # 5 samples, then 2 new in one shard
    assert {k: v for k, v in _snapshot(out).items() if k in first} == first
    assert sum(s.samples for s in stats) == 7
    description = read_dataset_json(out / "dataset.json")
    assert [(e["file"], e["read"], e["accepted"], e["rejected"])
            for e in description["ledger"]] == [("points.jsonl", 6, 5, 1),
                                                ("points.jsonl", 5, 2, 3)]
    reasons = sorted(r["reason"] for r in read_rejects(out / "rejects.parquet"))
    assert reasons == ["already_in_dataset", "already_in_dataset", "image_not_found",
                       "image_not_found"]


def test_extend_interrupted_before_dataset_json_then_rerun(tmp_path):
    """An extend killed after its shards, manifest and rejects were written but
    before dataset.json: the re-run counts only what the old dataset.json
    accounts for as the dataset, and reuses the new shards."""
    out = tmp_path / "out"
    assert main(_build_args(make_points_raw(tmp_path / "raw1", 5), out)) == 0
    old_description = (out / "dataset.json").read_bytes()
    raw2 = make_points_raw(tmp_path / "raw2", 4, first=3)
    assert main([*_build_args(raw2, out), "--mode", "extend"]) == 0
    expected = (_snapshot(out), read_rejects(out / "rejects.parquet"),
                read_dataset_json(out / "dataset.json"))
    new_shards = {p.name: p.stat().st_mtime_ns for p in (out / "shards").glob("*.tar")}

    (out / "dataset.json").write_bytes(old_description)  # as if killed before dataset.json
    assert main([*_build_args(raw2, out), "--mode", "extend"]) == 0
    assert verify(out) == []
    description = read_dataset_json(out / "dataset.json")
    assert _snapshot(out) == expected[0]
    assert read_rejects(out / "rejects.parquet") == expected[1]
    for key in ("counts", "shards", "ledger", "rejects_by_reason"):
        assert description[key] == expected[2][key]
    assert {p.name: p.stat().st_mtime_ns for p in (out / "shards").glob("*.tar")} == new_shards
