"""What the sampler calls at each step: the policy protocol, and what a step hands back.

A method (`migmcut.methods`: one module each) runs a `Policy`: `step(base, state)` returns a
`Proposal`, the logits and / or features of step t and where they hold; `after(event)` sees each
step's `sampler.StepEvent` once its tokens are fixed. `FullPolicy` (every step a full base call) is
the sampler's default. The helpers below are what policies share: the base's input rows once per
CFG branch, and gathering / scattering rows of a feature map.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

@dataclass
class Proposal:
    """What a policy hands the sampler for step t.

    logits / features: (B * branches, L, .) over the whole grid, or over `at` only. With logits
    None the sampler runs the base's head on the features where it reads logits.
    at: (B, n) masked grid positions: the logits are there and the sampler fixes only among them.
    refine: positions (B, m) -> exact logits (B * branches, m, K) there, for the m = ceil(refine_factor * k_t)
    positions the sampler ranks first from this proposal's logits.
    calls: what the step ran, each counted once in `SampleResult.counts` (default: its kind alone);
    a hybrid step runs the shortcut and a partial evaluation: ("shortcut", "hybrid").
    ran: call -> (B,) bool, the rows that made that call where not every row did (an adaptive step:
    some rows run the base, the others take the shortcut); `SampleResult.per_sample` counts them.
    """

    kind: str  # "full" | "shortcut" | "cache" | "recap" | "mlcache" | "hybrid"
    logits: torch.Tensor | None = None
    features: torch.Tensor | None = None
    at: torch.Tensor | None = None
    refine: Callable[[torch.Tensor], torch.Tensor] | None = None
    refine_factor: float = 1.0
    calls: tuple[str, ...] | None = None
    ran: dict[str, torch.Tensor] | None = None

    @property
    def counted(self) -> tuple[str, ...]:
        return (self.kind,) if self.calls is None else self.calls


class Policy:
    """Where step t's logits and features come from (a fresh one per sampled batch).

    `threshold` (adaptive tokens): each row fixes at least every masked position whose candidate's
    probability is >= it (None: the schedule's k_t). Rows then finish at different steps, and the
    states the policy sees hold the rows still running only (`StepState.rows`)."""

    threshold: float | None = None

    def step(self, base, state) -> Proposal:
        raise NotImplementedError

    def after(self, event) -> None:
        """Called after step t's tokens are fixed (`sampler.StepEvent`); most policies ignore it."""


class FullPolicy(Policy):
    """Every step is a full base call."""

    def step(self, base, state):
        logits, features = base(branch_rows(state), state.cond)
        return Proposal("full", logits, features)


EXACT_OR_PREDICTED = ("full", "shortcut", "cache")  # every other call kind is a partial evaluation


def partial_calls(counts: dict) -> int:
    """Steps that ran a partial evaluation (recap, mlcache, a hybrid's refinement), from `SampleResult.counts`."""
    return sum(n for kind, n in counts.items() if kind not in EXACT_OR_PREDICTED)


def branch_count(state) -> int:
    return len(state.cond) // state.tokens.shape[0]


def branch_rows(state) -> torch.Tensor:
    """The base's input rows: the token state once per CFG branch."""
    return state.tokens.repeat(branch_count(state), 1)


def branch_index(rows: torch.Tensor, batch: int, branches: int) -> torch.Tensor:
    """The rows (R,) of a batch of `batch` as rows of its branches' (branches * batch) layout, branch by branch."""
    return torch.cat([rows + b * batch for b in range(branches)])


def padded_positions(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's True positions of mask (R, L), ascending, padded with L to the longest row:
    (positions (R, M), valid (R, M))."""
    L = mask.shape[1]
    grid = torch.arange(L, device=mask.device).expand_as(mask)
    where = torch.where(mask, grid, L).sort(dim=1).values[:, : int(mask.sum(1).max())]
    return where, where < L


def rows_of(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """x (R, T, D) at rows (R, n) -> (R, n, D)."""
    return x.gather(1, rows[..., None].expand(-1, -1, x.shape[-1]))


def scatter_rows(x: torch.Tensor, positions: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """x (R, L, D) with values (R, n, D) written at positions (R, n), in place."""
    return x.scatter_(1, positions[..., None].expand(-1, -1, x.shape[-1]), values.to(x.dtype))
