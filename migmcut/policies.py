"""Step policies: where a sampling step gets its logits and features from.

- `FullPolicy`: every step is a full base call (vanilla sampling).
- `BudgetPolicy(full_steps, shortcut)`: full base calls only at `full_steps`; every other step
  predicts the features from the last (full or predicted) ones and the tokens just fixed, with
  the shortcut network (`kind == "shortcut"`) or by reusing them unchanged (`shortcut=None`:
  the feature cache, `kind == "cache"`). Logits at skipped steps come from the base's own head,
  which the sampler runs only at the still-masked positions (policies return logits None).

`budget_schedule(N, B, rounding)` places B full steps among N: step 0, then max(prev + 1, round(N k / B)).
"""

from __future__ import annotations

import math

import torch

ROUNDINGS = ("half-up", "half-even")  # where budget_schedule puts an exact half


def budget_schedule(steps: int, budget: int, rounding: str = "half-up") -> list[int]:
    """B full steps among N: step 0, then max(prev + 1, round(N k / B)), halves rounded up
    (floor(x + 0.5), migmcut's own) or to even (Python's `round` of N * (k / B), the paper's
    `refresh_steps`); they differ only on exact halves (N=5, B=2: [0, 3] against [0, 2])."""
    if not 1 <= budget <= steps:
        raise ValueError(f"budget must be between 1 and the step count ({steps}), got {budget}")
    if rounding not in ROUNDINGS:
        raise ValueError(f"unknown budget rounding {rounding!r} (choose from {', '.join(ROUNDINGS)})")
    full = [0]
    for k in range(1, budget):
        at = math.floor(steps * k / budget + 0.5) if rounding == "half-up" else round(steps * (k / budget))
        full.append(max(full[-1] + 1, at))
    return full


class FullPolicy:
    """Every step is a full base call."""

    def step(self, base, state):
        branches = state.cond.shape[0] // state.tokens.shape[0]
        logits, features = base(state.tokens.repeat(branches, 1), state.cond)
        return "full", logits, features


class BudgetPolicy:
    """Full base calls at `full_steps`; the shortcut (or the identity: a cache) in between."""

    def __init__(self, full_steps: list[int], shortcut: torch.nn.Module | None = None):
        if not full_steps or full_steps[0] != 0:
            raise ValueError("the first step must be a full base call")
        self.full_steps = set(full_steps)
        self.shortcut = shortcut
        self.kind = "cache" if shortcut is None else "shortcut"
        self.features = None

    def step(self, base, state):
        branches = state.cond.shape[0] // state.tokens.shape[0]
        if state.t in self.full_steps:
            logits, self.features = base(state.tokens.repeat(branches, 1), state.cond)
            return "full", logits, self.features
        if self.shortcut is not None:
            self.features = self.predict(base, state, branches)
        return self.kind, None, self.features  # the sampler runs the head where it reads logits

    def predict(self, base, state, branches: int) -> torch.Tensor:
        B = state.tokens.shape[0]
        # every trajectory of a batch fixes the same number of tokens per step
        pos = state.new_tokens.nonzero()[:, 1].view(B, -1)
        ids = state.tokens.gather(1, pos)
        emb = base.embed_tokens(ids) + base.embed_positions(pos)
        emb = emb.repeat(branches, 1, 1).to(self.features.dtype)
        new_mask = torch.ones(emb.shape[:2], dtype=torch.bool, device=emb.device)
        ratio = torch.full((emb.shape[0],), state.mask_ratio, device=emb.device)
        wants_pos = self.shortcut.config.query_positions
        return self.shortcut(
            self.features, emb, new_mask, ratio,
            cond_emb=base.embed_conditions(state.cond),
            cond_mask=base.condition_mask(state.cond),
            query_pos=base.grid_position_embeddings().to(self.features.dtype) if wants_pos else None,
        )
