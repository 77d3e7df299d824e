"""hybrid: the shortcut carries the whole feature map forward; the positions the sampler ranks
first from it are evaluated exactly against the cached context, and fixed from those logits."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from migmcut.errors import UserError
from migmcut.methods import Method
from migmcut.methods.shortcut import BudgetPolicy
from migmcut.policies import Proposal, branch_count, branch_rows, scatter_rows


@dataclass
class HybridConfig:
    """Recipe section `hybrid`: the shortcut with exact evaluation where the sampler is about to fix."""

    candidates: float = 2.0  # positions evaluated exactly per step, as a multiple of the tokens fixed
    refresh_new: bool = True  # recompute (and write back) the tokens fixed at the step before
    context: bool = False  # recompute the prompt / condition positions too

    def validate(self) -> None:
        if not 1 <= self.candidates <= 64:
            raise ValueError(f"candidates must be between 1 and 64 (a multiple of the tokens fixed), "
                             f"got {self.candidates}")


class HybridPolicy(BudgetPolicy):
    """The shortcut between full steps, with the positions the sampler is about to fix evaluated
    exactly: the sampler ranks every masked position from the shortcut's logits and hands the best
    ceil(candidates * k_t) to `refine`, which recomputes them against the K/V of the last full step
    (with `refresh_new`, the tokens fixed at the step before too, their K/V written back) and writes
    the exact features into the map the shortcut carries on; with `context`, the prompt / condition
    positions are recomputed too (they attend to the image, which changed since the full step)."""

    def __init__(self, full_steps: list[int], shortcut: torch.nn.Module, candidates: float = 2.0,
                 refresh_new: bool = True, context: bool = False):
        super().__init__(full_steps, shortcut)
        if self.reads_sequence:
            raise UserError("hybrid writes exact features into the map the shortcut carries, and a released "
                            "shortcut carries the whole input sequence: use method shortcut with it")
        self.kind, self.candidates, self.refresh_new, self.context = "hybrid", candidates, refresh_new, context
        self.cache = None

    def full(self, base, state) -> Proposal:
        logits, self.features, self.cache = base.forward_with_cache(branch_rows(state), state.cond)
        return Proposal("full", logits, self.features)

    def step(self, base, state):
        if state.t in self.full_steps:
            return self.full(base, state)
        branches = branch_count(state)
        self.features = self.predict(base, state, branches)
        fresh = state.new_tokens.nonzero()[:, 1].view(state.tokens.shape[0], -1) if self.refresh_new else None

        def refine(where: torch.Tensor) -> torch.Tensor:
            positions = where if fresh is None else torch.cat([fresh, where], 1)
            positions = positions.repeat(branches, 1)
            logits, features = base.partial_forward(branch_rows(state), state.cond, positions, self.cache,
                                                    update=fresh is not None, context=self.context)
            scatter_rows(self.features, positions, features)
            return logits[:, positions.shape[1] - where.shape[1]:]

        return Proposal("hybrid", None, self.features, refine=refine, refine_factor=self.candidates,
                        calls=("shortcut", "hybrid"))


class Hybrid(Method):
    name = "hybrid"
    summary = "the shortcut, with the positions about to be fixed evaluated exactly"
    knobs = HybridConfig
    needs_shortcut = True
    needs_partial = True
    searched = True
    colour = "tab:red"

    def policy(self, full_steps, *, shortcut, counts, knobs):
        h = knobs or HybridConfig()
        return HybridPolicy(full_steps, shortcut, h.candidates, h.refresh_new, h.context)


METHOD = Hybrid()
