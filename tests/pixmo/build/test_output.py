"""The build's output folder: prepared by mode, shards written or kept, finished with
tables and a ledger that must balance."""

from __future__ import annotations

from collections import Counter

import pytest

from pixmo.build.config import BuildConfig
from pixmo.build.images import resolve_image
from pixmo.build.output import finish, prepare_output, write_or_keep
from pixmo.build.parts import PlannedSample
from pixmo.build.stages import Annotator, check_record, join_sample, plan, read_raw
from pixmo.dataset.reader import committed_shards, iter_samples
from pixmo.dataset.tables import read_dataset_json, read_manifest, read_rejects
from pixmo.dataset.writer import ShardConfig, write_dataset
from pixmo.errors import PixmoError
from pixmo.rejects import Reason, Reject, merge_runs
from tests.conftest import make_sample
from tests.pixmo.build.test_stages import dot, make_raw


def planned_samples(tmp_path, out) -> tuple[BuildConfig, list[PlannedSample], list[Reject]]:
    """Both images of ``make_raw`` as planned samples, and the one reject (record 3)."""
    raw = make_raw(tmp_path / "raw", [dot("images/a.png"), dot("images/b.png"),
                                      dot("images/a.png", 500.0)])
    cfg = BuildConfig(str(raw), transcribe=False)
    records = [check_record(r) for r in read_raw(str(raw), "points.jsonl")]
    samples, rejects = [], []
    for ref in ("images/a.png", "images/b.png"):
        named = [k for k in records if k.image == ref]
        image, _ = resolve_image(ref, named, cfg, out)
        part, more = Annotator(cfg).part(image, named)
        rejects += more
        samples.append(plan(join_sample([part.image], part.annotations, cfg,
                                        prepare_output(out, "resume"))))
    return cfg, sorted(samples, key=lambda s: s.key), rejects


def test_a_shard_is_written_once_and_kept_while_it_holds_the_same_samples(tmp_path):
    out = tmp_path / "out"
    cfg, samples, _ = planned_samples(tmp_path, out)
    first = write_or_keep(0, samples, out, cfg, None)
    assert first.samples == 2 and first.first_key == samples[0].key
    tar = out / "shards" / first.shard
    inode = tar.stat().st_ino
    assert write_or_keep(0, samples[::-1], out, cfg, first) == first
    assert tar.stat().st_ino == inode  # kept, not rewritten
    other = write_or_keep(0, samples[:1], out, cfg, first)
    assert other.samples == 1 and other.sha256 != first.sha256


def test_prepare_output_keeps_committed_shards_and_drops_what_is_not_marked(tmp_path):
    out = tmp_path / "out"
    cfg, samples, _ = planned_samples(tmp_path, out)
    stats = write_or_keep(0, samples, out, cfg, None)
    (out / "shards" / "pixmo-000001.tar").write_bytes(b"renamed, never marked")
    (out / "shards" / "pixmo-000002.tar.partial").write_bytes(b"killed writer")
    previous = prepare_output(out, "resume")
    assert previous.committed == {0: stats} and previous.start_index == 0
    assert sorted(p.name for p in (out / "shards").iterdir()) == [
        "pixmo-000000.json", "pixmo-000000.tar"]
    assert prepare_output(out, "overwrite").committed == {}
    assert list((out / "shards").iterdir()) == []
    with pytest.raises(PixmoError, match="mode must be one of resume, overwrite, extend"):
        prepare_output(out, "append")
    with pytest.raises(PixmoError, match="extend needs a finished dataset"):
        prepare_output(out, "extend")


def test_finish_writes_the_tables_and_checks_the_ledger(tmp_path):
    out = tmp_path / "out"
    cfg, samples, rejects = planned_samples(tmp_path, out)
    previous = prepare_output(out, "resume")
    written = [write_or_keep(0, samples, out, cfg, None)]
    read, accepted = Counter({"points.jsonl": 3}), Counter({"points.jsonl": 2})
    with pytest.raises(PixmoError, match="ledger does not balance"):
        finish(out, cfg, "local", written, [], read, accepted, Counter(), previous)
    assert not (out / "dataset.json").exists()
    description = finish(out, cfg, "local", written, rejects, read, accepted,
                         Counter({"caption_failed": 1}), previous)
    assert description == read_dataset_json(out / "dataset.json")
    assert description["ledger"] == [{"file": "points.jsonl", "read": 3, "accepted": 2,
                                      "rejected": 1}]
    assert description["counts"]["rejects"] == 1 and description["counts"]["failures"] == 1
    assert description["rejects_by_reason"] == {"out_of_bounds": 1}
    assert [r["key"] for r in read_manifest(out / "manifest.parquet")] == [s.key for s in samples]
    assert [r["record"] for r in read_rejects(out / "rejects.parquet")] == ["3"]
    assert [s.key for s in iter_samples(out)] == [s.key for s in samples]
    assert not (out / ".staging").exists()

    extended = prepare_output(out, "extend")
    assert all(s.key in extended.keys for s in samples) and extended.start_index == 1
    between = samples[0].key[:-1] + ("1" if samples[0].key[-1] == "0" else "0")
    assert samples[0].key < between < samples[1].key or between < samples[0].key
    assert between not in extended.keys and "f" * 24 not in extended.keys
    # what workers are sent: the base shards' key ranges, never its keys or rows
    assert extended.keys.shards == ((samples[0].key, samples[1].key, 0,
                                     committed_shards(out)[0].sha256),)
    assert (out / ".staging/keys/000000.txt").read_text().split() == [s.key for s in samples]
    assert extended.base == {0: committed_shards(out)[0]}


def test_extend_finds_the_keys_of_shards_in_any_key_order(tmp_path):
    """``write_dataset`` keeps its input's order, so a shard's first and last keys
    need not bound it: membership looks at the keys themselves."""
    samples = [make_sample(i) for i in range(12)]
    write_dataset(tmp_path, samples, name="unsorted", config=ShardConfig(max_samples=5))
    assert [s.key for s in samples] != sorted(s.key for s in samples)
    keys = prepare_output(tmp_path, "extend").keys
    assert all(s.key in keys for s in samples)
    assert not any(make_sample(i).key in keys for i in range(12, 40))
    assert len(keys.shards) == 3 and all(low < high for low, high, _, _ in keys.shards)


def test_rejects_handed_over_in_order_stream_to_the_same_bytes(tmp_path):
    """``in_order``: the engine hands over per-partition runs merged in input order;
    the rejects file and dataset.json are those of the whole list sorted here."""
    outputs = []
    for in_order in (False, True):
        out = tmp_path / f"out-{in_order}"
        cfg, samples, rejects = planned_samples(tmp_path / f"raw-{in_order}", out)
        more = [Reject("read", Reason.INVALID_RECORD, "not JSON", "points.jsonl", str(i))
                for i in (7, 5, 9)]
        everything = [*more, *rejects]
        handed = merge_runs([sorted(everything[::2], key=lambda r: int(r.record)),
                             sorted(everything[1::2], key=lambda r: int(r.record))]
                            ) if in_order else everything
        written = [write_or_keep(0, samples, out, cfg, None)]
        description = finish(out, cfg, "local", written, handed, Counter({"points.jsonl": 6}),
                             Counter({"points.jsonl": 2}), Counter(),
                             prepare_output(out, "resume"), in_order=in_order)
        assert description["counts"]["rejects"] == 4
        outputs.append(((out / "rejects.parquet").read_bytes(), description["ledger"],
                        description["rejects_by_reason"]))
    assert outputs[0] == outputs[1]


def test_staged_reject_runs_merge_in_input_order_once_each(tmp_path, monkeypatch):
    """Runs staged by any worker in any order (one twice, one cut differently when
    retried) come back merged in input order, each reject once, however many runs
    (merged in rounds when more than can be open at once)."""
    from pixmo.build import output

    rejects = [Reject("read", Reason.INVALID_RECORD, f"bad {i}", f"f{i % 3}.jsonl", str(i))
               for i in range(40)]
    runs = [rejects[i::7] for i in range(7)] + [rejects[3::7], rejects[10:14]]
    monkeypatch.setattr(output, "MAX_OPEN_RUNS", 2)
    out = tmp_path / "out"
    prepare_output(out, "resume")
    assert [output.stage_rejects(out, run[::-1]) for run in runs] == [6] * 5 + [5, 5, 6, 4]
    assert output.stage_rejects(out, []) == 0
    assert len(list((out / output.REJECT_RUNS).iterdir())) == 8  # the twice-staged run once
    merged = [r.to_row() for r in output.staged_rejects(out)]
    assert merged == output.reject_rows(rejects)
    prepare_output(out, "resume")  # a new run stages its own
    assert list(output.staged_rejects(out)) == []
