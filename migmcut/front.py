"""The vanilla front: paired bootstrap intervals, and the fastest vanilla run that is as good.

Every bench configuration samples the same conditions with the same per-sample seeds, so the
samples pair up across rows. One set of bootstrap resamples (index arrays over the samples) is
drawn once and applied to every row: a row's interval is the percentile interval of its metric
over those resamples, and a comparison of two rows uses the resampled *difference*, which is far
tighter than two overlapping intervals.

Vanilla V is *at least as good* as row R when, on every metric, V is not significantly worse:
the upper end of the (1 - level) interval of (V - R), oriented so that positive is better for
V, is >= 0. A tie inside the interval therefore counts for vanilla. Metrics without a
resampler are compared on their point values. A row's `front_speedup` is the seconds per image
of the fastest vanilla run that is at least as good, over the row's own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Scores:
    """One configuration's primary figures on the bench samples."""

    point: dict[str, float]  # metric -> figure on all samples
    draws: dict[str, np.ndarray] = field(default_factory=dict)  # metric -> figure on each resample

    def interval(self, metric: str, level: float = 0.95) -> list[float] | None:
        d = self.draws.get(metric)
        if d is None:
            return None
        lo, hi = np.quantile(d, [(1 - level) / 2, (1 + level) / 2])
        return [float(lo), float(hi)]


def bootstrap_indices(num_samples: int, draws: int, seed: int = 0) -> np.ndarray:
    """(draws, num_samples) resample indices, shared by every row of a bench run."""
    return np.random.default_rng(seed).integers(0, num_samples, size=(draws, num_samples))


def scores(point: dict[str, float], resamplers: dict, indices: np.ndarray | None) -> Scores:
    """A row's Scores. Each metric's draws are shifted to centre on its point value: a resample
    repeats samples, which biases a set statistic such as a Frechet distance upwards (by more than
    its spread at a few hundred samples); the shift removes that bias, as the basic bootstrap does."""
    draws = {}
    if indices is not None and len(indices):
        for m, fn in resamplers.items():
            if m in point:
                d = np.array([fn(idx) for idx in indices], dtype=np.float64)
                draws[m] = d - d.mean() + point[m]
    return Scores(dict(point), draws)


def at_least_as_good(v: Scores, r: Scores, higher: dict[str, bool], level: float = 0.95) -> bool:
    """Is `v` at least as good as `r` on every metric in `higher` (a tie inside the interval counts)?"""
    for metric, up in higher.items():
        if v.point.get(metric) is None or r.point.get(metric) is None:
            continue
        sign = 1.0 if up else -1.0
        if metric in v.draws and metric in r.draws:
            diff = sign * (v.draws[metric] - r.draws[metric])
            if np.quantile(diff, (1 + level) / 2) < 0:
                return False
        elif sign * (v.point[metric] - r.point[metric]) < 0:
            return False
    return True


def as_good(row: Scores, vanilla: dict[int, Scores], higher: dict[str, bool], level: float = 0.95) -> list[int]:
    """Step counts of the vanilla runs at least as good as `row`, ascending."""
    return sorted(n for n in vanilla if at_least_as_good(vanilla[n], row, higher, level))


def cheapest(good: list[int], cost: dict[int, float]) -> int | None:
    """The cheapest of the step counts `good` (None when empty: the row beats every vanilla run).

    `cost`: vanilla steps -> seconds per image (or the step count itself, before timing)."""
    return min(good, key=lambda n: (cost[n], n)) if good else None


def front_vanilla(row: Scores, vanilla: dict[int, Scores], cost: dict[int, float], higher: dict[str, bool],
                  level: float = 0.95) -> int | None:
    """Step count of the cheapest vanilla run at least as good as `row` (None: row beats all of them)."""
    return cheapest(as_good(row, vanilla, higher, level), cost)


def steps_to_refine(rows: list[Scores], vanilla: dict[int, Scores], higher: dict[str, bool],
                    level: float = 0.95) -> set[int]:
    """Vanilla step counts to run next so that each row's front vanilla is pinned to one step.

    For every row, with v the fewest vanilla steps at least as good and u the most steps run
    below v (0 when none), vanilla between u and v may also be as good: ask for their midpoint.
    """
    run = sorted(vanilla)
    need = set()
    for row in rows:
        v = front_vanilla(row, vanilla, {n: n for n in run}, higher, level)
        if v is None:
            continue
        u = max((n for n in run if n < v), default=0)
        if v - u > 1:
            need.add((u + v) // 2)
    return need - set(run)
