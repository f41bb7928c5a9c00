from __future__ import annotations

from pipelines.demo import main, scenes
from pixmo.dataset import verify
from pixmo.shards import iter_samples


def test_demo_builds_a_valid_dataset(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--scenes", "30", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "wrote 30 samples in 1 shards" in out
    assert verify(tmp_path / "dataset") == []
    read = list(iter_samples(tmp_path / "dataset"))
    assert [s.key for s in read] == [s.key for s in scenes(30, 3)]
    for sample in read:
        total = sum(p["count"] for p in sample.json["points"])
        assert 1 <= total <= 6
        assert all(0 <= c <= 100 for p in sample.json["points"] for xy in p["points"] for c in xy)
