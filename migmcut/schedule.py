"""Unmasking schedules: how many tokens each of the N steps fixes.

`gamma(x)` is the fraction of positions still masked at progress x in [0, 1] (1 at x=0, 0 at
x=1). `tokens_per_step(L, N, name)` turns it into integers k_0..k_{N-1}, each >= 1, summing
to exactly L.
"""

from __future__ import annotations

import math

SCHEDULES = ("arccos", "cosine", "linear")


def gamma(name: str, x: float) -> float:
    if name == "cosine":
        return math.cos(0.5 * math.pi * x)
    if name == "arccos":
        return math.acos(x) / (0.5 * math.pi)
    if name == "linear":
        return 1.0 - x
    raise ValueError(f"unknown schedule {name!r} (choose from {', '.join(SCHEDULES)})")


def tokens_per_step(num_tokens: int, steps: int, name: str) -> list[int]:
    if not 1 <= steps <= num_tokens:
        raise ValueError(f"steps must be between 1 and the number of tokens ({num_tokens}), got {steps}")
    masked = num_tokens
    counts = []
    for t in range(steps):
        remaining_steps = steps - t - 1
        target = math.floor(num_tokens * gamma(name, (t + 1) / steps) + 1e-9)
        # fix at least one token now, and leave at least one for every later step
        target = min(max(target, remaining_steps), masked - 1)
        counts.append(masked - target)
        masked = target
    return counts
