"""mlcache (Lumina-DiMOO's ML-Cache): between refreshes, recompute the positions whose last logits
had the lowest maximum, write their K/V back, and sample from the mix of fresh and cached logits."""

from __future__ import annotations

import math
from dataclasses import dataclass

from migmcut.methods import Method
from migmcut.policies import Policy, Proposal, branch_rows, scatter_rows


@dataclass
class MLCacheConfig:
    """Recipe section `mlcache`: Lumina-DiMOO's defaults (`--cache_ratio 0.9 --warmup_ratio 0.3
    --refresh_interval 5`). Without a budget the full steps follow warmup_ratio; with one, the
    warm-up that gives that many full steps."""

    cache_ratio: float = 0.9  # fraction of positions reused at a partial step
    warmup_ratio: float = 0.3
    refresh_interval: int = 5

    def validate(self) -> None:
        for name in ("cache_ratio", "warmup_ratio"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)}")
        if self.refresh_interval < 1:
            raise ValueError(f"refresh_interval must be >= 1, got {self.refresh_interval}")


def mlcache_schedule(steps: int, warmup_ratio: float = 0.3, refresh_interval: int = 5,
                     budget: int | None = None) -> list[int]:
    """ML-Cache's full steps: s <= w or (s - w) % refresh_interval == 0, w = int(steps * warmup_ratio)
    (Lumina-DiMOO's rule); with `budget`, the warm-up w that makes that many full steps instead."""
    if refresh_interval < 1:
        raise ValueError(f"mlcache refresh interval must be >= 1, got {refresh_interval}")

    def full(w: int) -> list[int]:
        return [s for s in range(steps) if s <= w or (s - w) % refresh_interval == 0]

    if budget is None:
        return full(int(steps * warmup_ratio))
    least = len(full(0))
    if not least <= budget <= steps:
        raise ValueError(f"mlcache with refresh interval {refresh_interval} needs a budget between {least} "
                         f"and {steps} at {steps} steps, got {budget}")
    return full(next(w for w in range(steps) if len(full(w)) == budget))


class MLCachePolicy(Policy):
    """At a partial step recompute the positions whose logits had the lowest maximum at the step
    before (each branch on its own), write their K/V back into the cache, and hand the sampler the
    cached logits with the fresh ones written in."""

    def __init__(self, full_steps: list[int], cache_ratio: float = 0.9):
        if not full_steps or full_steps[0] != 0:
            raise ValueError("the first step must be a full base call")
        self.full_steps, self.cache_ratio = set(full_steps), cache_ratio
        self.cache = self.logits = self.features = None

    def step(self, base, state):
        if state.t in self.full_steps:
            self.logits, self.features, self.cache = base.forward_with_cache(branch_rows(state), state.cond)
            return Proposal("full", self.logits, self.features)
        L = state.tokens.shape[1]
        # the positions at or below the (1 - cache_ratio) quantile of the max logit: as many as
        # torch.quantile's linear interpolation puts there when the values are distinct
        n = math.floor((1 - self.cache_ratio) * (L - 1) + 1e-9) + 1
        positions = self.logits.max(-1).values.topk(n, dim=-1, largest=False).indices
        logits, features = base.partial_forward(branch_rows(state), state.cond, positions, self.cache, update=True)
        scatter_rows(self.logits, positions, logits)
        scatter_rows(self.features, positions, features)
        return Proposal("mlcache", self.logits, self.features)


class MLCache(Method):
    name = "mlcache"
    summary = "ML-Cache: the least confident positions recomputed against cached K/V"
    knobs = MLCacheConfig
    needs_partial = True
    own_placement = True
    budget = "optional"
    colour = "tab:brown"

    def full_steps(self, steps, budget, knobs, rounding):
        m = knobs or MLCacheConfig()
        return mlcache_schedule(steps, m.warmup_ratio, m.refresh_interval, budget)

    def policy(self, full_steps, *, shortcut, counts, knobs):
        return MLCachePolicy(full_steps, (knobs or MLCacheConfig()).cache_ratio)


METHOD = MLCache()
