"""recap (ReCAP): a full step keeps every layer's K/V and the sampler's ranking of the masked
positions; each later step up to the next full step fixes the next chunk of that ranking, from
logits of the group's positions recomputed against the cached context (docs/partial-evaluation.md)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from migmcut.methods import Method
from migmcut.policies import Policy, Proposal, branch_count, branch_rows


@dataclass
class RecapConfig:
    """Recipe section `recap`: ReCAP's local steps per full step (K; the paper's runs use 1).
    None: the fewest that reach the budget, ceil(N / B) - 1 (1 whenever B >= N / 2)."""

    local: int | None = None

    def validate(self) -> None:
        if self.local is not None and self.local < 1:
            raise ValueError(f"local must be >= 1 (local steps per full step), got {self.local}")

    def local_for(self, steps: int, budget: int) -> int:
        return self.local if self.local is not None else max(1, math.ceil(steps / budget) - 1)


def recap_schedule(steps: int, budget: int, local: int = 1) -> list[int]:
    """ReCAP's full steps: P full steps, then groups of one full step and `local` local steps (the
    last group shortened), P the largest that makes `budget` full steps in all (two P can: the
    larger leaves whole groups, as each published (N, P) does)."""
    if local < 1:
        raise ValueError(f"recap local steps per full step must be >= 1, got {local}")
    least = math.ceil(steps / (local + 1))
    if not least <= budget <= steps:
        raise ValueError(f"recap with {local} local step(s) per full step needs a budget between {least} "
                         f"and {steps} at {steps} steps, got {budget}")
    prefix = max(p for p in range(steps + 1) if p + math.ceil((steps - p) / (local + 1)) == budget)
    return list(range(prefix)) + list(range(prefix, steps, local + 1))


class RecapPolicy(Policy):
    """A full step keeps the K/V cache and the sampler's ranking; the group of positions the full
    step and its local steps fix is the top of that ranking, one chunk of k_t per step. A local
    step recomputes all group positions (decoded or still masked) against the cached context
    (nothing written back) and hands the sampler that step's chunk alone."""

    def __init__(self, full_steps: list[int], counts: list[int]):
        if not full_steps or full_steps[0] != 0:
            raise ValueError("the first step must be a full base call")
        self.full_steps, self.counts = set(full_steps), counts
        self.cache = self.group = None
        self.chunks: dict[int, tuple[int, int]] = {}  # step -> its chunk's slice of the group

    def step(self, base, state):
        if state.t in self.full_steps:
            logits, features, self.cache = base.forward_with_cache(branch_rows(state), state.cond)
            return Proposal("full", logits, features)
        lo, hi = self.chunks[state.t]
        positions = self.group.repeat(branch_count(state), 1)
        logits, features = base.partial_forward(branch_rows(state), state.cond, positions, self.cache, context=True)
        return Proposal("recap", logits[:, lo:hi], features[:, lo:hi], at=self.group[:, lo:hi])

    def after(self, event) -> None:
        if event.kind != "full":
            return
        end = next((s for s in sorted(self.full_steps) if s > event.t), len(self.counts))
        offset, self.chunks = self.counts[event.t], {}
        for s in range(event.t + 1, end):
            self.chunks[s] = (offset, offset + self.counts[s])
            offset += self.counts[s]
        self.group = event.ranked[:, :offset]


class Recap(Method):
    name = "recap"
    summary = "ReCAP: local steps fix the last full step's ranking from cached K/V"
    knobs = RecapConfig
    needs_partial = True
    own_placement = True
    colour = "tab:purple"

    def full_steps(self, steps, budget, knobs, rounding):
        if budget is None:
            raise ValueError(f"method recap needs a budget (full base steps out of {steps})")
        return recap_schedule(steps, budget, (knobs or RecapConfig()).local_for(steps, budget))

    def policy(self, full_steps, *, shortcut, counts, knobs):
        return RecapPolicy(full_steps, counts)


METHOD = Recap()
