"""molmo/train/schedule.py: linear warmup from 0, cosine to 10% of the peak at the last step."""

from __future__ import annotations

import math

import pytest

from molmo.train.schedule import lr_at


def test_warmup_is_linear_from_zero_to_the_peak():
    lrs = [lr_at(s, peak=2e-4, warmup=200, total=1000, final_fraction=0.1) for s in (1, 100, 200)]
    assert lrs == pytest.approx([1e-6, 1e-4, 2e-4])


def test_cosine_ends_at_the_final_fraction_and_halfway_between():
    kw = {"peak": 1.0, "warmup": 100, "total": 1100, "final_fraction": 0.1}
    assert lr_at(1100, **kw) == pytest.approx(0.1)
    assert lr_at(600, **kw) == pytest.approx(0.55)  # cos(pi/2) = 0: the midpoint
    assert lr_at(350, **kw) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))
    after = [lr_at(s, **kw) for s in range(100, 1101)]
    assert all(a >= b for a, b in zip(after, after[1:], strict=False))


def test_pure_function_of_the_step():
    kw = {"peak": 3e-5, "warmup": 10, "total": 50, "final_fraction": 0.1}
    assert [lr_at(s, **kw) for s in range(1, 51)] == [lr_at(s, **kw) for s in range(1, 51)]


def test_no_warmup_and_warmup_past_the_end():
    assert lr_at(1, peak=1.0, warmup=0, total=10, final_fraction=0.0) == pytest.approx(
        0.5 * (1 + math.cos(math.pi / 10)))
    assert lr_at(5, peak=1.0, warmup=20, total=10, final_fraction=0.1) == pytest.approx(0.25)


@pytest.mark.parametrize("step", [0, 11])
def test_steps_outside_the_run_are_refused(step):
    with pytest.raises(ValueError, match=rf"step {step} is outside 1..10"):
        lr_at(step, peak=1.0, warmup=2, total=10, final_fraction=0.1)
