"""molmo/eval/heldout.py: greedy-generation pointing/counting metrics and caption loss on real
held-out shards, run on a real exported tiny Molmo as ``molmo eval`` does."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from molmo.eval.heldout import evaluate_run, point_questions
from molmo.model.molmo import Molmo
from molmo.model.weights import save_pretrained
from molmo.preprocess.tokenizer import MolmoTokenizer
from molmo.train.config import EvalConfig, TrainConfig
from pixmo.dataset.writer import ShardConfig, write_dataset
from pixmo.errors import PixmoError
from pixmo.points.metrics import count_accuracy, pointing_score
from pixmo.points.prompts import POINT_COUNT_TEMPLATES
from tests.conftest import make_sample
from tests.molmo.train.test_loop import make_tokenizer, tiny_config

COUNTS = [1, 2, 1, 3, 1]  # majority answer 1: baseline 3/5


def counting_sample(i: int, count: int):
    sample = make_sample(200 + i)
    sample.json["points"] = [{
        "label": "square", "points": [[10.0 + 20 * j, 50.0] for j in range(count)],
        "count": count, "collection_method": "pointing", "annotators": ["a1"]}]
    return sample


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A held-out dataset, an exported random-init tiny model with its tokenizer, a config."""
    root = tmp_path_factory.mktemp("eval")
    held = root / "held"
    write_dataset(held, [counting_sample(i, c) for i, c in enumerate(COUNTS)], name="held",
                  config=ShardConfig(max_samples=3))
    tok_dir = make_tokenizer(root / "tok")
    cfg = tiny_config(root / "run", held, tok_dir,
                      eval={"pointing": str(held), "captions": str(held), "max_new_tokens": 8,
                            "batch_size": 2})
    config = root / "train.yaml"
    config.write_text(yaml.safe_dump(cfg))
    torch.manual_seed(0)
    model = Molmo(TrainConfig.from_dict(cfg).model.molmo_config())
    export = save_pretrained(model, root / "run" / "model")
    MolmoTokenizer.from_dir(tok_dir, vocab_size=400).save(root / "tokenizer")
    for item in (root / "tokenizer").iterdir():
        item.rename(export / item.name)
    return root, config


def test_molmo_eval_writes_metrics_and_predictions(run):
    root, config = run
    results = evaluate_run(str(config))
    out = root / "run" / "eval" / "final"
    assert json.loads((out / "eval.json").read_text()) == results
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert results["num_eval_examples"] == len(records) == len(COUNTS)
    assert results["majority_count"] == 1
    assert results["majority_baseline_accuracy"] == pytest.approx(3 / 5)
    assert [r["true_count"] for r in records] == COUNTS
    assert [len(r["true_points"]) for r in records] == COUNTS
    for r in records:
        assert set(r) >= {"key", "label", "predicted_points", "true_points",
                          "predicted_count", "true_count"}
        assert r["prompt"] in {t.format(label="square") for t in POINT_COUNT_TEMPLATES}
    # The summary is exactly what the per-example records score to.
    scores = [pointing_score([tuple(p) for p in r["predicted_points"]],
                             [tuple(p) for p in r["true_points"]], width=r["width"],
                             height=r["height"]) for r in records]
    assert results["pointing_f1"] == pytest.approx(sum(s.f1 for s in scores) / len(scores))
    counts = count_accuracy([r["predicted_count"] for r in records], COUNTS)
    assert results["counting_accuracy"] == counts.exact
    # Random init over a 400-token vocabulary: near ln(400) per caption token.
    assert results["num_caption_examples"] == len(COUNTS)
    assert 0.5 * math.log(400) < results["caption_loss"] < 2 * math.log(400)
    # Greedy and seeded: a second evaluation asks and answers the same.
    again = evaluate_run(str(config), out_dir=str(root / "again"))
    assert again == results


def test_questions_are_seeded_and_bounded(run):
    root, _ = run
    held = str(root / "held")
    first = point_questions(held, EvalConfig(pointing=held, max_examples=3, seed=4))
    second = point_questions(held, EvalConfig(pointing=held, max_examples=3, seed=4))
    assert [q.prompt for q in first] == [q.prompt for q in second]
    assert [q.true_count for q in first] == COUNTS[:3]
    assert first[0].image.size == (32, 24)


def test_missing_model_and_empty_eval_are_user_errors(run, tmp_path):
    root, config = run
    with pytest.raises(PixmoError, match="no exported model here"):
        evaluate_run(str(config), checkpoint=str(tmp_path))
    cfg = yaml.safe_load(config.read_text())
    cfg["eval"] = {"pointing": None, "captions": None}
    bare = tmp_path / "bare.yaml"
    bare.write_text(yaml.safe_dump(cfg))
    with pytest.raises(PixmoError, match="nothing to evaluate"):
        evaluate_run(str(bare))
