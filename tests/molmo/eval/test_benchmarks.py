"""molmo/eval/benchmarks.py: questions read from real shards, answers scored and summarised
to hand-worked numbers, and the summary table."""

from __future__ import annotations

import numpy as np
import pytest

from molmo.eval.benchmarks import (
    COUNT_PROMPT,
    POINT_PROMPT,
    questions,
    score,
    summarize,
    table,
)
from pixmo.dataset.writer import write_dataset
from pixmo.errors import PixmoError
from pixmo.points.masks import encode_mask
from pixmo.points.text import points_to_text
from tests.conftest import make_sample


def _left_half() -> np.ndarray:  # 24 x 32 image: pixel columns 0-15
    mask = np.zeros((24, 32), bool)
    mask[:, :16] = True
    return mask


@pytest.fixture
def dataset(tmp_path):
    first, second = make_sample(1), make_sample(2)
    first.json["points"] = [
        {"label": "Square", "points": [[25.0, 50.0]], "count": 1, "collection_method": "pointing",
         "annotators": [], "masks": [encode_mask(_left_half())]},
        {"label": "dots", "points": [], "count": 4, "collection_method": "counting",
         "annotators": []}]
    second.json["qa"] = [{"question": "How many dogs?", "answer": "3", "source": "countbenchqa"},
                         {"question": "Why?", "answer": "So.", "source": "elsewhere"}]
    write_dataset(tmp_path / "ds", [first, second], name="ds")
    return str(tmp_path / "ds"), first.key, second.key


def test_each_benchmark_reads_its_own_questions(dataset):
    path, first, second = dataset
    counts = questions("pixmo-count", path)
    assert [(q.key, q.prompt, q.truth["count"]) for q in counts if q.key.startswith(first)] == [
        (f"{first}-0", COUNT_PROMPT.format(label="square"), 1),
        (f"{first}-1", "How many dots are there?", 4)]
    (bench,) = questions("countbench", path)
    assert (bench.key, bench.prompt, bench.truth) == (f"{second}-0", "How many dogs?",
                                                      {"count": 3})
    (point,) = questions("pixmo-points-eval", path)  # only point sets with masks
    assert point.prompt == POINT_PROMPT.format(label="square")
    assert (point.truth["width"], point.truth["height"]) == (32, 24)
    assert len(questions("pixmo-count", path, limit=1)) == 1


def test_counting_answers_score_and_summarise(dataset):
    path, first, _ = dataset
    square, dots = questions("pixmo-count", path)[:2]
    right = score("pixmo-count", square, "Counting the dots shows a total of 1.")
    assert right["predicted_count"] == 1 and right["correct"] is True
    none = score("pixmo-count", dots, "There are none.")  # read as no count, as officially
    assert none["predicted_count"] is None and none["correct"] is False
    off = score("pixmo-count", dots, "five")
    summary = summarize("pixmo-count", [right, none, off])
    # truths 1, 4, 4: exact 1/3; within one: 1 and 5 (of 4) -> 2/3; readable 2/3
    assert summary == {"benchmark": "pixmo-count", "examples": 3, "accuracy": 1 / 3,
                       "within_one": 2 / 3, "valid": 2 / 3,
                       "accuracy_by_count": {"1": 1.0, "4": 0.0}}
    assert table(summary).splitlines() == [
        "benchmark           pixmo-count", "examples            3",
        "accuracy            33.3", "within_one          66.7", "valid               66.7",
        "accuracy (count 1)  100.0", "accuracy (count 4)  0.0"]


def test_pointing_answers_score_against_the_masks(dataset):
    path, _, _ = dataset
    (point,) = questions("pixmo-points-eval", path)
    # 10% of 32 px = 3.2 px: inside the left half; 80% = 25.6 px: outside
    hit = score("pixmo-points-eval", point, points_to_text([(10.0, 50.0)], "square"))
    both = score("pixmo-points-eval", point,
                 points_to_text([(10.0, 50.0), (80.0, 50.0)], "square"))
    assert (hit["precision"], hit["recall"], hit["f1"]) == (1.0, 1.0, 1.0)
    assert (both["precision"], both["recall"]) == (0.5, 1.0)
    assert both["predicted_points"] == [[10.0, 50.0], [80.0, 50.0]]
    summary = summarize("pixmo-points-eval", [hit, both])
    assert summary["precision"] == 0.75 and summary["recall"] == 1.0
    assert summary["f1"] == pytest.approx((1 + 2 / 3) / 2)


def test_a_dataset_without_the_benchmark_names_the_import(tmp_path):
    write_dataset(tmp_path / "plain", [make_sample(3)], name="plain")
    with pytest.raises(PixmoError, match="no pixmo-points-eval questions here; make the "
                                         "dataset with `pixmo import pixmo-points-eval`"):
        questions("pixmo-points-eval", str(tmp_path / "plain"))


def test_a_sample_not_as_the_import_writes_it_is_named(tmp_path):
    sample = make_sample(4)
    sample.json["qa"] = [{"question": "How many?", "answer": "four", "source": "countbenchqa"}]
    write_dataset(tmp_path / "odd", [sample], name="odd")
    with pytest.raises(PixmoError, match=rf"odd: sample {sample.key} has no countbench "
                                         r"question as `pixmo import` writes it \(ValueError"):
        questions("countbench", str(tmp_path / "odd"))
