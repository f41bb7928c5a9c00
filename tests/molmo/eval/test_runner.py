"""molmo/eval/runner.py end to end: a tiny Molmo trained here, eval-format datasets imported
here (``pixmo import`` of parquet written with the released columns, images served by a local
HTTP server or embedded), ``molmo eval --benchmark`` on each; a run failing after one batch
resumes without redoing it; two real gloo ranks write what one process writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from molmo.cli import main
from molmo.eval.benchmarks import POINT_PROMPT, questions, score, summarize
from molmo.eval.runner import PREDICTIONS, SUMMARY, BenchmarkConfig, run_benchmark
from molmo.predict import Predictor
from molmo.train.config import TrainConfig
from molmo.train.loop import train
from pixmo.errors import PixmoError
from pixmo.fetch import FetchConfig
from pixmo.release.importer import ImportConfig, import_release
from tests.http_server import LocalServer, Reply
from tests.molmo.data.test_order import make_dataset
from tests.molmo.train.test_loop import make_tokenizer, tiny_config
from tests.one_line import assert_one_line
from tests.pixmo.release.test_subsets import image_bytes, sha, write_parquet

IMPORT = ImportConfig(fetch=FetchConfig(timeout_s=5.0, retries=1), workers=2)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    """The tiny preset (336 px crops, as ``Predictor`` cuts them) trained for 3 steps."""
    root = tmp_path_factory.mktemp("model")
    cfg = tiny_config(root / "run", make_dataset(root / "train", 4, 4),
                      make_tokenizer(root / "tok"), steps=3,
                      data={"batch_size": 4, "num_workers": 0, "mode": "finite"},
                      checkpoint={"interval": 0, "export": True})
    cfg["model"]["overrides"] = {"llm": {"vocab_size": 400, "embedding_size": 400}}
    cfg["preprocess"].update(crop_size=336, overlap_margins=[4, 4])
    cfg["data"]["max_sequence_length"] = 768
    train(TrainConfig.from_dict(cfg))
    return str(root / "run" / "model")


def _masks(seed: int, n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.random((48, 64)) < 0.5 for _ in range(n)]


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, str]:
    """pixmo-count (test split: counts, no points), pixmo-points-eval, countbenchqa."""
    root = tmp_path_factory.mktemp("eval")
    red, blue = image_bytes((200, 0, 0)), image_bytes((0, 0, 200))
    with LocalServer() as server:
        a, b = server.route("/a.jpg", Reply(body=red)), server.route("/b.jpg", Reply(body=blue))
        count = [{"image_url": a, "image_sha256": sha(red), "count": 3, "points": None,
                  "label": "Apples"},
                 {"image_url": b, "image_sha256": sha(blue), "count": 7, "points": None,
                  "label": "pears"},
                 {"image_url": a, "image_sha256": sha(red), "count": 2, "points": None,
                  "label": "cups"}]
        points = [{"image_url": a, "image_sha256": sha(red), "label": "Cup",
                   "points": [{"x": 20.0, "y": 30.0}, {"x": 70.0, "y": 60.0}],
                   "masks": [m.tolist() for m in _masks(1, 2)]},
                  {"image_url": b, "image_sha256": sha(blue), "label": "unicorn",
                   "points": [], "masks": []}]
        for subset, rows in (("pixmo-count", count), ("pixmo-points-eval", points)):
            parquet = write_parquet(root / f"{subset}.parquet", subset, rows)
            import_release(subset, [parquet], root / subset, config=IMPORT)
    bench = [{"image": {"bytes": image_bytes((i * 40, 9, 9), fmt="PNG"), "path": None},
              "text": "t", "question": f"How many birds are in picture {i}?", "number": i + 2}
             for i in range(3)]
    parquet = write_parquet(root / "countbench.parquet", "countbenchqa", bench)
    import_release("countbenchqa", [parquet], root / "countbenchqa", config=IMPORT)
    return {"pixmo-count": str(root / "pixmo-count"), "countbench": str(root / "countbenchqa"),
            "pixmo-points-eval": str(root / "pixmo-points-eval")}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("benchmark,n", [("pixmo-count", 3), ("countbench", 3),
                                         ("pixmo-points-eval", 2)])
def test_molmo_eval_benchmark_end_to_end(checkpoint, datasets, tmp_path, capsys, benchmark, n):
    out = tmp_path / benchmark
    assert main(["eval", "--benchmark", benchmark, datasets[benchmark], "--checkpoint",
                 checkpoint, "--out", str(out), "--batch-size", "2",
                 "--max-new-tokens", "6"]) == 0
    records = read_jsonl(out / PREDICTIONS)
    asked = questions(benchmark, datasets[benchmark])
    assert [r["key"] for r in records] == [q.key for q in asked] and len(records) == n
    summary = json.loads((out / SUMMARY).read_text())
    assert {k: v for k, v in summary.items() if k != "config"} == summarize(benchmark, records)
    for q, r in zip(asked, records, strict=True):  # each line is what its answer scores to
        assert r == score(benchmark, q, r["answer"])
    if benchmark == "pixmo-count":
        assert {r["prompt"]: r["true_count"] for r in records} == {
            "How many apples are there?": 3, "How many cups are there?": 2,
            "How many pears are there?": 7}
    elif benchmark == "countbench":
        assert {r["prompt"]: r["true_count"] for r in records} == {
            f"How many birds are in picture {i}?": i + 2 for i in range(3)}
    else:
        cup = next(r for r in records if r["true_points"])
        assert cup["prompt"] == POINT_PROMPT.format(label="cup")
        assert cup["true_points"] == [[20.0, 30.0], [70.0, 60.0]]
        absent = next(r for r in records if not r["true_points"])
        # nothing to point at: 1 exactly when the answer holds no point
        assert absent["f1"] == float(not absent["predicted_points"])
    # answered two at a time (left-padded, one KV cache) as each is answered alone
    alone = BenchmarkConfig(benchmark, datasets[benchmark], checkpoint, str(tmp_path / "alone"),
                            batch_size=1, max_new_tokens=6)
    run_benchmark(alone, lambda: Predictor(checkpoint))
    assert (tmp_path / "alone" / PREDICTIONS).read_bytes() == (out / PREDICTIONS).read_bytes()
    lines = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert lines[:2] == [["benchmark", benchmark], ["examples", str(n)]]
    metric = "f1" if benchmark == "pixmo-points-eval" else "accuracy"
    assert [metric, f"{100 * summary[metric]:.1f}"] in lines


class FailAfter:
    """Raises once ``n`` batches are on disk, as a run killed there would stop."""

    def __init__(self, n: int) -> None:
        self.n, self.seen = n, []

    def __call__(self, records: list[dict]) -> None:
        self.seen.extend(r["key"] for r in records)
        if len(self.seen) >= self.n:
            raise KeyboardInterrupt


def test_a_failed_run_resumes_without_redoing_answers(checkpoint, datasets, tmp_path):
    predictor = Predictor(checkpoint)
    whole = BenchmarkConfig("pixmo-count", datasets["pixmo-count"], checkpoint,
                            str(tmp_path / "whole"), batch_size=1, max_new_tokens=6)
    expected = run_benchmark(whole, lambda: predictor)
    cfg = BenchmarkConfig("pixmo-count", datasets["pixmo-count"], checkpoint,
                          str(tmp_path / "resumed"), batch_size=1, max_new_tokens=6)
    first = FailAfter(1)
    with pytest.raises(KeyboardInterrupt):
        run_benchmark(cfg, lambda: predictor, after_batch=first)
    assert not (tmp_path / "resumed" / PREDICTIONS).exists()
    part = tmp_path / "resumed" / "part-00000.jsonl"
    with open(part, "ab") as fh:  # a line torn by a kill mid-write
        fh.write(b'{"key": "torn", "answ')
    second = FailAfter(99)
    summary = run_benchmark(cfg, lambda: predictor, after_batch=second)
    asked = [q.key for q in questions("pixmo-count", datasets["pixmo-count"])]
    assert first.seen == asked[:1] and second.seen == asked[1:]
    assert (tmp_path / "resumed" / PREDICTIONS).read_bytes() == \
        (tmp_path / "whole" / PREDICTIONS).read_bytes()
    assert {k: v for k, v in summary.items() if k != "config"} == \
        {k: v for k, v in expected.items() if k != "config"}
    assert len(part.read_text().splitlines()) == 3  # the torn line was dropped


def test_a_whole_record_cut_before_its_newline_is_answered_again(checkpoint, datasets,
                                                                 tmp_path):
    predictor = Predictor(checkpoint)
    whole = BenchmarkConfig("pixmo-count", datasets["pixmo-count"], checkpoint,
                            str(tmp_path / "whole"), batch_size=1, max_new_tokens=6)
    run_benchmark(whole, lambda: predictor)
    cfg = BenchmarkConfig("pixmo-count", datasets["pixmo-count"], checkpoint,
                          str(tmp_path / "cut"), batch_size=1, max_new_tokens=6)
    with pytest.raises(KeyboardInterrupt):
        run_benchmark(cfg, lambda: predictor, after_batch=FailAfter(1))
    second_line = (tmp_path / "whole" / PREDICTIONS).read_bytes().split(b"\n")[1]
    with open(tmp_path / "cut" / "part-00000.jsonl", "ab") as fh:  # killed before "\n"
        fh.write(second_line)
    rerun = FailAfter(99)
    run_benchmark(cfg, lambda: predictor, after_batch=rerun)
    asked = [q.key for q in questions("pixmo-count", datasets["pixmo-count"])]
    assert rerun.seen == asked[1:]  # the cut record was not taken as answered
    assert (tmp_path / "cut" / PREDICTIONS).read_bytes() == \
        (tmp_path / "whole" / PREDICTIONS).read_bytes()


def _rank(rank: int, store: str, cfg: BenchmarkConfig) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        torch.set_num_threads(1)
        run_benchmark(cfg, lambda: Predictor(cfg.checkpoint))
    finally:
        dist.destroy_process_group()


def test_two_ranks_write_what_one_process_writes(checkpoint, datasets, tmp_path):
    def config(name: str) -> BenchmarkConfig:
        return BenchmarkConfig("countbench", datasets["countbench"], checkpoint,
                               str(tmp_path / name), batch_size=1, max_new_tokens=6)

    one = run_benchmark(config("one"), lambda: Predictor(checkpoint))
    mp.spawn(_rank, args=(str(tmp_path / "store"), config("two")), nprocs=2, join=True)
    parts = sorted(p.name for p in (tmp_path / "two").glob("part-*.jsonl"))
    assert parts == ["part-00000.jsonl", "part-00001.jsonl"]
    assert [len(read_jsonl(tmp_path / "two" / p)) for p in parts] == [2, 1]
    assert (tmp_path / "two" / PREDICTIONS).read_bytes() == \
        (tmp_path / "one" / PREDICTIONS).read_bytes()
    two = json.loads((tmp_path / "two" / SUMMARY).read_text())
    assert {k: v for k, v in two.items() if k != "config"} == \
        {k: v for k, v in one.items() if k != "config"}


def test_two_ranks_finish_what_one_killed_process_began(checkpoint, datasets, tmp_path):
    def config(name: str) -> BenchmarkConfig:
        return BenchmarkConfig("countbench", datasets["countbench"], checkpoint,
                               str(tmp_path / name), batch_size=1, max_new_tokens=6)

    predictor = Predictor(checkpoint)
    run_benchmark(config("one"), lambda: predictor)
    with pytest.raises(KeyboardInterrupt):  # one process stops after its first answer
        run_benchmark(config("two"), lambda: predictor, after_batch=FailAfter(1))
    mp.spawn(_rank, args=(str(tmp_path / "store"), config("two")), nprocs=2, join=True)
    asked = [q.key for q in questions("countbench", datasets["countbench"])]
    # the two answers left are sliced between the ranks: one each, none redone
    part0, part1 = (read_jsonl(tmp_path / "two" / f"part-0000{r}.jsonl") for r in (0, 1))
    assert [r["key"] for r in part0] == [asked[0], asked[1]]
    assert [r["key"] for r in part1] == [asked[2]]
    assert (tmp_path / "two" / PREDICTIONS).read_bytes() == \
        (tmp_path / "one" / PREDICTIONS).read_bytes()


def test_user_errors_name_the_dataset_or_folder(checkpoint, datasets, tmp_path):
    with pytest.raises(PixmoError, match=r"no countbench questions here; make the dataset "
                                         r"with `pixmo import countbenchqa`"):
        run_benchmark(BenchmarkConfig("countbench", datasets["pixmo-count"], checkpoint,
                                      str(tmp_path / "a")), lambda: None)
    assert not (tmp_path / "a").exists()  # nothing written, no model loaded
    cfg = BenchmarkConfig("countbench", datasets["countbench"], checkpoint, str(tmp_path / "b"),
                          max_new_tokens=2, limit=1)
    run_benchmark(cfg, lambda: Predictor(checkpoint))
    other = BenchmarkConfig("pixmo-count", datasets["pixmo-count"], checkpoint,
                            str(tmp_path / "b"), max_new_tokens=3)
    with pytest.raises(PixmoError, match=r"holds answers of another run \(differs in "
                                         r"benchmark, dataset, max_new_tokens\)"):
        run_benchmark(other, lambda: None)
    with pytest.raises(PixmoError, match="unknown benchmark 'vqa'"):
        BenchmarkConfig("vqa", "d", "c", "o")


def test_a_rerun_with_other_model_settings_is_refused(checkpoint, datasets, tmp_path, capsys):
    out = str(tmp_path / "c")
    args = ["eval", "--benchmark", "countbench", datasets["countbench"], "--checkpoint",
            checkpoint, "--out", out, "--max-new-tokens", "2", "--limit", "1"]
    assert main(args) == 0  # float32 on CPU, the checkpoint's tokenizer
    assert json.loads((tmp_path / "c" / "run.json").read_text())["dtype"] == "float32"
    before = (tmp_path / "c" / "part-00000.jsonl").read_bytes()
    capsys.readouterr()
    for extra, says in ((["--dtype", "bfloat16"], "differs in dtype)"),
                        (["--tokenizer", str(tmp_path)], "differs in tokenizer)")):
        assert main([*args, *extra]) == 2
        assert_one_line(capsys.readouterr().err, "molmo", "eval",
                        f"{out}: holds answers of another run ({says}")
    assert (tmp_path / "c" / "part-00000.jsonl").read_bytes() == before  # nothing added
    assert main([*args, "--dtype", "float32", "--tokenizer", checkpoint]) == 0  # the same
    (tmp_path / "c" / "run.json").write_text("{not json")
    capsys.readouterr()
    assert main(args) == 2
    assert_one_line(capsys.readouterr().err, "molmo", "eval", f"{out}: run.json is not JSON")
