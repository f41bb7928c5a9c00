"""The learning-rate schedule: warmup then cosine, a pure function of the step.

Linear warmup from 0, then cosine decay to a fraction of the peak at the last step (the official
``CosWithWarmup``, ``alpha_f`` = 0.1).

Being a function of the step alone, the schedule needs no state of its own to resume.
"""

from __future__ import annotations

import math


def lr_at(step: int, *, peak: float, warmup: int, total: int, final_fraction: float) -> float:
    """The learning rate of optimizer step ``step`` (1-based) of ``total``."""
    if step < 1 or step > total:
        raise ValueError(f"step {step} is outside 1..{total}")
    if step < warmup:
        return peak * step / warmup
    final = peak * final_fraction
    span = total - warmup
    if span <= 0:
        return peak
    progress = (step - warmup) / span
    return final + (peak - final) * 0.5 * (1.0 + math.cos(math.pi * progress))
