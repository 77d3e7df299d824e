"""On-policy training pairs: the sampler runs the shortcut policy, the base says what it should have predicted.

A store holds the base's own trajectories, so a shortcut trained on it only ever sees exact
features and tokens the base chose. At generation it sees neither: after the first shortcut
step its input is its own last prediction, and the tokens just fixed were drawn from logits of
that prediction. `rollout_pairs` samples a batch exactly as `generate` does with the shortcut
(same sampler, policy and schedule), and at every shortcut step t also runs the base on the
token state the shortcut policy reached; each such step gives one training pair per row:

    h        the shortcut's input: its own prediction for step t - 1 (exact right after a full step)
    inputs   the tokens fixed at step t - 1 and the conditions (`BudgetPolicy.step_inputs`)
    target   the base's features at step t's token state (the teacher, online)
    mask     the positions masked at step t (where the sampler reads logits)

This is MIGM-Shortcut's `--teacher_online_rollout` (its trainer rolls k student steps from a
recorded state and asks the teacher for the reached state's features), taken to the whole
trajectory: the rollout follows the sampler's CFG-guided draws, both branches of a row share its
tokens, and full steps fall where generation puts them. Every pair costs one base call, as many
as recording a step. Conditions are the recipe's training conditions (`record.conditions_for`),
never the bench or selection prompt sets.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from migmcut.methods import get_method
from migmcut.methods.shortcut import BudgetPolicy
from migmcut.placement import save_schedules, shortcut_schedule
from migmcut.policies import branch_rows
from migmcut.recording import conditions_for
from migmcut.runner import Run
from migmcut.sampler import trajectory_seed

ROLLOUT_STREAM = 0x6F6E6C6E  # rollout seeds apart from record's (the same run seed gives other draws)


@dataclass
class Pair:
    """One shortcut step of a rollout, for all its rows (B * branches)."""

    h: torch.Tensor  # (R, L, D)
    inputs: dict  # Shortcut.forward's keyword inputs besides h
    target: torch.Tensor  # (R, L, D)
    mask: torch.Tensor  # (R, L) bool
    step: int


class TeacherTap(BudgetPolicy):
    """The shortcut policy, which also runs the base at each shortcut step and keeps the pair."""

    def __init__(self, full_steps: list[int], shortcut: torch.nn.Module):
        super().__init__(full_steps, shortcut)
        self.pairs: list[Pair] = []

    def predict(self, base, state, branches: int) -> torch.Tensor:
        inputs = self.step_inputs(base, state, branches)
        rows = branch_rows(state)
        _, target = base(rows, state.cond)
        self.pairs.append(Pair(self.features, inputs, target, rows == base.mask_id, state.t))
        return self.shortcut(self.features, **inputs)


def rollout_pairs(base, shortcut, conditions: list, seeds: list[int], config, full_steps: list[int]) -> tuple[list[Pair], torch.Tensor]:
    """Sample `conditions` with the shortcut at `full_steps` (as `generate` does) and return the pairs
    of its shortcut steps and the final tokens."""
    tap = TeacherTap(full_steps, shortcut)
    result = Run(base, config, get_method("shortcut"), full_steps, shortcut).sample(conditions, seeds, policy=tap)
    return tap.pairs, result.tokens


def rollout_seeds(run_seed: int, indices) -> list[int]:
    return [trajectory_seed(run_seed ^ ROLLOUT_STREAM, int(i)) for i in indices]


class OnlineBatches:
    """The trainer's batches from rollouts: (inputs, targets, masks) lists of one pair per update.

    Rollout r (numbered on from the step training starts at, so a resumed run draws new ones)
    samples `cfg.batch_size // branches` training conditions at budget `online_budgets[r % n]`;
    every rank rolls its own conditions, and all ranks the same budget, so they make the same
    number of updates. Its pairs are used once each, in a random order.
    """

    def __init__(self, base, model, recipe, cfg, init=None, *, rank: int = 0, world: int = 1, start: int = 0):
        self.base, self.model, self.recipe, self.cfg = base, model, recipe, cfg
        self.rank, self.world, self.rollout = rank, world, start
        steps = recipe.sampler.steps
        self.schedules = {}
        for b in cfg.online_budgets:
            self.schedules[b] = shortcut_schedule("auto", steps, b, init, recipe.sampler.budget_rounding)
        self.per_rollout = max(1, cfg.batch_size // recipe.sampler.branches)
        self.device = next(model.parameters()).device
        self._sums = [0.0, 0.0, 0]

    def __iter__(self):

        dtype = next(self.model.parameters()).dtype
        while True:
            budget = self.cfg.online_budgets[self.rollout % len(self.cfg.online_budgets)]
            first = (self.rollout * self.world + self.rank) * self.per_rollout
            idx = range(first, first + self.per_rollout)
            conditions = conditions_for(self.recipe, self.cfg.seed, idx)
            pairs, _ = rollout_pairs(self.base, _Cast(self.model, dtype), conditions,
                                     rollout_seeds(self.cfg.seed, idx), self.recipe.sampler, self.schedules[budget])
            self.rollout += 1
            order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(self.cfg.seed + self.rollout))
            for i in order.tolist():
                p = pairs[i]
                x = {k: v.to(self.device, dtype) if torch.is_tensor(v) and v.is_floating_point() else v
                     for k, v in {"h": p.h, **p.inputs}.items()}
                yield [x], [p.target.to(self.device, dtype)], [p.mask.to(self.device)]

    def observe(self, mse: float, mse_identity: float) -> None:
        """One update's on-policy errors: the shortcut's and the cache's (h copied)."""
        self._sums[0] += mse
        self._sums[1] += mse_identity
        self._sums[2] += 1

    def figures(self) -> dict:
        """On-policy errors of the updates since the last call: the shortcut's and the cache's (h copied)."""
        mse, identity, n = self._sums
        self._sums = [0.0, 0.0, 0]
        return {"online_mse": mse / n, "online_mse_identity": identity / n} if n else {}

    def save_schedules(self, out) -> None:
        """The schedules the rollouts trained on, beside the checkpoint, so `generate` and `bench` use them."""
        save_schedules(out, {self.recipe.sampler.steps: {b: {"full_steps": full} for b, full in self.schedules.items()}},
                       {"objective": "the schedules its online rollouts trained on"})


class _Cast(torch.nn.Module):
    """The shortcut in its training dtype, fed and read in the base's (bf16 on a GPU)."""

    def __init__(self, net: torch.nn.Module, dtype: torch.dtype):
        super().__init__()
        self.net, self.dtype = net, dtype

    def forward(self, h, **inputs):
        cast = {k: v.to(self.dtype) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in inputs.items()}
        return self.net(h.to(self.dtype), **cast).to(h.dtype)
