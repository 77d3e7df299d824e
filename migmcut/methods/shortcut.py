"""shortcut: full base calls at the budget's steps; in between the shortcut network predicts the
features from the last (full or predicted) ones and the tokens just fixed (`BudgetPolicy`, which
with no network is the feature cache). Logits at skipped steps come from the base's own head,
which the sampler runs only at the still-masked positions."""

from __future__ import annotations

import torch

from migmcut.methods import Method
from migmcut.policies import Policy, Proposal, branch_count, branch_rows, padded_positions, rows_of
from migmcut.shortcut import ShortcutInputs


class BudgetPolicy(Policy):
    """Full base calls at `full_steps`; the shortcut (or the identity: a cache) in between."""

    def __init__(self, full_steps: list[int], shortcut: torch.nn.Module | None = None):
        if not full_steps or full_steps[0] != 0:
            raise ValueError("the first step must be a full base call")
        self.full_steps = set(full_steps)
        self.shortcut = shortcut
        self.kind = "cache" if shortcut is None else "shortcut"
        # a shortcut that reads the whole input sequence (the paper's released ones) carries it instead
        self.reads_sequence = getattr(shortcut, "reads_sequence", False)
        self.features = self.sequence = self.rows = self.inputs = self.conditioned = None

    def step(self, base, state):
        if state.t in self.full_steps:
            return self.full(base, state)
        if self.shortcut is not None:
            self.features = self.predict(base, state, branch_count(state))
        return Proposal(self.kind, None, self.features)  # the sampler runs the head where it reads logits

    def full(self, base, state) -> Proposal:
        """A full base call, whose features (or whole sequence) the next steps predict from."""
        if self.reads_sequence:
            logits, self.features, self.sequence = base.forward_sequence(branch_rows(state), state.cond)
        else:
            logits, self.features = base(branch_rows(state), state.cond)
        return Proposal("full", logits, self.features)

    def predict(self, base, state, branches: int) -> torch.Tensor:
        if self.reads_sequence:
            self.sequence = self.shortcut.advance(base, self.sequence, branch_rows(state), state.cond,
                                                  state.new_tokens.repeat(branches, 1), state.mask_ratio)
            if self.rows is None:  # where the image rows sit in the sequence: the same at every step
                grid = torch.arange(base.num_tokens, device=self.sequence.device).expand(self.sequence.shape[0], -1)
                self.rows = base.image_rows(grid)
            return rows_of(self.sequence, self.rows)
        return self.shortcut(self.features, **self.step_inputs(base, state, branches))

    def step_inputs(self, base, state, branches: int) -> dict:
        """The shortcut's inputs at step t besides h: the tokens fixed at step t - 1 and the conditions."""
        if self.inputs is None:  # a policy samples one batch: its conditions stay the same
            self.inputs = ShortcutInputs(base, base.device, self.features.dtype)
            self.conditioned = self.inputs.condition(state.cond)
        return {**new_token_inputs(base, self.inputs, state, branches), **self.conditioned}


def new_token_inputs(base, inputs: ShortcutInputs, state, branches: int) -> dict:
    """The shortcut's inputs for the tokens fixed at step t - 1 (`ShortcutInputs.tokens`), per CFG branch.
    Where rows fixed different numbers (adaptive tokens), the shorter ones are padded (new_mask False)
    and each row carries its own mask ratio."""
    B = state.tokens.shape[0]
    fixed = state.new_tokens.sum(1)
    if (fixed == fixed[0]).all():  # every trajectory of the batch fixed the same number of tokens
        pos = state.new_tokens.nonzero()[:, 1].view(B, -1).repeat(branches, 1)
        new_mask = torch.ones(pos.shape, dtype=torch.bool, device=pos.device)
        ratio = torch.full((pos.shape[0],), state.mask_ratio, device=pos.device)
    else:
        pos, new_mask = padded_positions(state.new_tokens)
        pos, new_mask = pos.clamp(max=base.num_tokens - 1).repeat(branches, 1), new_mask.repeat(branches, 1)
        ratio = (state.tokens == base.mask_id).float().mean(1).repeat(branches)
    ids = branch_rows(state).gather(1, pos).where(new_mask, 0)  # a pad reads code 0 (never attended to)
    return inputs.tokens(ids, pos, new_mask, ratio)


class Shortcut(Method):
    name = "shortcut"
    summary = "the shortcut network predicts the features between full steps"
    needs_shortcut = True
    searched = True
    colour = "tab:green"

    def policy(self, full_steps, *, shortcut, counts, knobs):
        return BudgetPolicy(full_steps, shortcut)


METHOD = Shortcut()
