"""Pointing and point-then-count questions."""

from __future__ import annotations

import random

import pytest

from pixmo.points.prompts import (
    POINT_COUNT_TEMPLATES,
    POINTING_TEMPLATES,
    point_example,
    point_prompt,
)


@pytest.mark.parametrize("templates", [POINTING_TEMPLATES, POINT_COUNT_TEMPLATES])
def test_templates_are_many_distinct_and_name_the_label_once(templates):
    assert len(templates) >= 40
    assert len(set(templates)) == len(templates)
    for template in templates:
        assert template.count("{label}") == 1, template
        assert template.format(label="x") != template


def test_count_templates_ask_for_a_number():
    words = ("how many", "count", "number", "total", "enumerate")
    assert all(any(w in t.lower() for w in words) for t in POINT_COUNT_TEMPLATES)
    assert not any(t.lower().startswith("how many") for t in POINTING_TEMPLATES)


def test_point_prompt_is_seeded_and_varied():
    a = [point_prompt("Red Cup", count=False, rng=random.Random(3)) for _ in range(3)]
    b = [point_prompt("Red Cup", count=False, rng=random.Random(3)) for _ in range(3)]
    assert a == b
    rng = random.Random(0)
    drawn = {point_prompt("Red Cup", count=True, rng=rng) for _ in range(400)}
    assert len(drawn) == len(POINT_COUNT_TEMPLATES)  # every template is reachable
    assert all("red cup" in q and "Red Cup" not in q for q in drawn)


def test_point_example_builds_question_and_molmo_answer():
    point_set = {"label": "Cat", "points": [[50.0, 50.0], [25.0, 75.0]], "count": 2,
                 "collection_method": "pointing", "annotators": ["a1"]}
    question, answer = point_example(point_set, count=True, rng=random.Random(1))
    assert question in {t.format(label="cat") for t in POINT_COUNT_TEMPLATES}
    assert answer == ('Counting the <points x1="25.0" y1="75.0" x2="50.0" y2="50.0" '
                      'alt="cat">cat</points> shows a total of 2.')
    empty = dict(point_set, points=[], count=0)
    question, answer = point_example(empty, count=False, rng=random.Random(1))
    assert question in {t.format(label="cat") for t in POINTING_TEMPLATES}
    assert answer == "There are none."
