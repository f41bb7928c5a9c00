"""Groupings on local disk (``pipelines.beam.shuffle``) in real Beam pipelines."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.beam import shuffle

LOCAL = PipelineOptions(["--runner=FnApiRunner"])


def _collect(pcoll: beam.PCollection, path: Path) -> None:
    """Each element as one line of ``path`` (written by the pipeline)."""
    (pcoll | f"Repr {path.name}" >> beam.Map(repr)
     | f"List {path.name}" >> beam.combiners.ToList()
     | f"Write {path.name}" >> beam.Map(lambda lines: path.write_text("\n".join(sorted(lines)))))


def test_group_on_disk_equals_group_by_key(tmp_path):
    rng = random.Random(0)
    elements = [(rng.choice(["img/a.png", "img/b.png", "ümlaut", 7, 8]) if i % 3 else
                 f"k{rng.randrange(2000)}", (i, f"v{i}", b"\x00\xff", None, [1.5, {"x": 2}]))
                for i in range(5000)]
    spill = tmp_path / "spill"
    spill.mkdir()
    with beam.Pipeline(options=LOCAL) as p:
        pcoll = p | beam.Create(elements)
        _collect(pcoll | "Disk" >> shuffle.GroupOnDisk(str(spill))
                 | "SortDisk" >> beam.MapTuple(lambda k, vs: (k, sorted(vs))),
                 tmp_path / "disk.txt")
        _collect(pcoll | "Memory" >> beam.GroupByKey()
                 | "SortMemory" >> beam.MapTuple(lambda k, vs: (k, sorted(vs))),
                 tmp_path / "memory.txt")
    disk = (tmp_path / "disk.txt").read_text()
    assert disk == (tmp_path / "memory.txt").read_text()
    assert len(disk.splitlines()) == len({k for k, _ in elements}) > 1000
    files = list(spill.iterdir())
    assert 100 < len(files) <= shuffle.PARTITIONS  # one per partition the bundle touched
    assert not [f for f in files if f.name.endswith(".partial")]


def test_spills_come_back_in_key_order(tmp_path):
    """``ordered`` partitions read back in sorted key order, across bundles,
    whatever characters the keys hold."""
    rng = random.Random(1)
    keys = [f"{rng.getrandbits(96):024x}" for _ in range(3000)] + ["", "a", "ab", "é", "日本", "~"]
    rng.shuffle(keys)
    spills = []
    for half in (keys[::2], keys[1::2]):  # two bundles
        writer = shuffle.Spill(str(tmp_path), shuffle.ordered)
        writer.start_bundle()
        for key in half:
            writer.process((key, {"key": key}))
        spills += [w.value for w in writer.finish_bundle()]
    back = list(shuffle.in_order(spills))
    assert [k for k, _ in back] == sorted(keys)
    assert all(v == {"key": k} for k, v in back)


def test_beam_build_removes_its_spills(tmp_path, monkeypatch):
    """A local build's groupings go through spill files in ``shuffle_dir``,
    all gone when it ends."""
    from benchmarks.build import make_raw
    from pipelines.beam import graph as beam
    from pixmo.build import BuildConfig
    from pixmo.dataset.tables import read_dataset_json
    from pixmo.dataset.writer import ShardConfig

    read = []
    monkeypatch.setattr(shuffle, "read_spill", lambda path, real=shuffle.read_spill:
                        read.append(path) or real(path))
    make_raw(tmp_path / "raw", 300)
    (tmp_path / "tmp").mkdir()
    cfg = BuildConfig(raw_dir=str(tmp_path / "raw"), transcribe=False,
                      shards=ShardConfig(max_samples=64))
    beam.run(cfg, str(tmp_path / "out"), shuffle_dir=str(tmp_path / "tmp"))
    description = read_dataset_json(tmp_path / "out/dataset.json")
    assert [s["samples"] for s in description["shards"]] == [64, 64, 64, 64, 44]
    groupings = {Path(p).relative_to(tmp_path / "tmp").parts[1] for p in read}
    assert groupings == {"by-ref", "by-hash", "samples"}
    assert list((tmp_path / "tmp").iterdir()) == []


def test_spill_folders_of_killed_builds_are_removed(tmp_path):
    """Entering a ``SpillFolder`` removes the folders of builds whose process is gone,
    and only those; leaving it removes its own."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / f"{shuffle.PREFIX}{dead.pid}-abc/by-ref").mkdir(parents=True)
    (tmp_path / f"{shuffle.PREFIX}{os.getppid()}-def").mkdir()  # a live build's
    (tmp_path / "pixmo-shuffle-notes").mkdir()  # not one of ours
    with shuffle.SpillFolder(str(tmp_path)) as spills:
        made = Path(spills.path)
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
            [made.name, f"{shuffle.PREFIX}{os.getppid()}-def", "pixmo-shuffle-notes"])
        assert made.name.startswith(f"{shuffle.PREFIX}{os.getpid()}-")
        grouping = spills.group("by-ref")
        writer = spills.spill_in_order("samples")
        assert (grouping.directory, writer.directory) == (str(made / "by-ref"),
                                                          str(made / "samples"))
        assert writer.partition is shuffle.ordered
    assert not made.exists()
