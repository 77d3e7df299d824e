"""adaptive-shortcut: adaptive full steps per sample (as FirstBlockCache / TeaCache / MagCache do for
diffusion). The first step runs the base; at every later step the shortcut predicts each row's
features, and a signal read from that prediction, before any base call, says whether the row runs
the base instead. The rows that need it run it together as one sub-batch (both CFG branches); the
others keep the prediction.

Signals (`adaptive-shortcut.signal`), per row, compared with `threshold` (the base runs above it):
- change: the relative change of the features the shortcut predicts, mean over the masked
  positions, summed over the steps since the row's last full step (TeaCache's accumulated change);
- confidence: 1 - the mean top probability of the shortcut's logits at the k_t masked positions
  it is most confident about (the positions about to be fixed);
- disagreement: the fraction of those positions whose top-1 under the shortcut differs from the
  one under the row's last full step.
Guards: `max_skip` consecutive shortcut steps at most; `budget` (or --budget) caps the base calls
per sample. The shortcut runs on every row at every later step (the signal needs it): a step that
then runs the base counts both calls.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from migmcut.errors import UserError, arg
from migmcut.methods import Method
from migmcut.methods.shortcut import BudgetPolicy, new_token_inputs
from migmcut.policies import Proposal, branch_count, branch_index, branch_rows
from migmcut.shortcut import ShortcutInputs

SIGNALS = ("change", "confidence", "disagreement")


@dataclass
class AdaptiveShortcutConfig:
    """Recipe section `adaptive-shortcut`."""

    signal: str = "change"  # change | confidence | disagreement (module docstring)
    threshold: float = 0.2  # a row runs the base where its signal is above this (0 to 1)
    max_skip: int = 3  # at most this many shortcut steps in a row
    budget: int | None = None  # at most this many base calls per sample (None: no cap)

    def validate(self) -> None:
        if self.signal not in SIGNALS:
            raise ValueError(f"signal must be one of {', '.join(SIGNALS)}, got {self.signal!r}")
        if not 0 <= self.threshold <= 1:
            raise ValueError(f"threshold must be between 0 and 1 (the {self.signal} signal), got {self.threshold}")
        if not 0 <= self.max_skip <= 10_000:
            raise ValueError(f"max_skip must be between 0 and 10000 (shortcut steps in a row), got {self.max_skip}")
        if self.budget is not None and self.budget < 1:
            raise ValueError(f"budget must be >= 1 (base calls per sample, the first step's included), got {self.budget}")


class AdaptiveStepPolicy(BudgetPolicy):
    """Per row and step, the base or the shortcut, from a signal of the shortcut's prediction.

    Its caches (features, calls, steps skipped, accumulated change, last full top-1) hold every
    row of the sampled batch; a step reads and writes the rows still running (`StepState.rows`).
    `threshold` is the sampler's adaptive tokens (None: the schedule's k_t)."""

    def __init__(self, shortcut: torch.nn.Module, counts: list[int], config: AdaptiveShortcutConfig,
                 tokens: float | None = None):
        super().__init__([0], shortcut)
        if self.reads_sequence:
            raise UserError(f"{arg('method', 'adaptive-shortcut')} reads the shortcut's feature map, and a released "
                            "shortcut carries the whole input sequence: use method shortcut with it")
        self.counts, self.config, self.threshold = counts, config, tokens
        self.calls = self.skipped = self.drift = self.top1 = None

    def step(self, base, state):
        if state.t == 0:  # every row runs the base
            out = self.full(base, state)
            B = state.tokens.shape[0]
            self.inputs = ShortcutInputs(base, base.device, self.features.dtype)
            self.conditioned = self.inputs.condition(state.cond)
            self.calls = torch.ones(B, dtype=torch.long, device=base.device)
            self.skipped = torch.zeros_like(self.calls)
            self.drift = torch.zeros(B, device=base.device)
            self.top1 = out.logits[:B].argmax(-1)
            return out
        B, R, branches = self.calls.shape[0], state.tokens.shape[0], branch_count(state)
        rows = state.rows if state.rows is not None else torch.arange(B, device=base.device)
        idx = branch_index(rows, B, branches)
        h = self.features[idx]
        conditioned = {k: v[idx] if torch.is_tensor(v) and v.shape[0] == B * branches else v
                       for k, v in self.conditioned.items()}
        pred = self.shortcut(h, **new_token_inputs(base, self.inputs, state, branches), **conditioned)
        signal = self.signal(base, state, h[:R], pred[:R], rows)
        need = (signal > self.config.threshold) | (self.skipped[rows] >= self.config.max_skip)
        if self.config.budget is not None:
            need &= self.calls[rows] < self.config.budget
        features, logits = pred, None
        if need.any():  # the rows that need the base run it together: one sub-batch, both branches
            sub = branch_index(need.nonzero()[:, 0], R, branches)
            logits, exact = base(branch_rows(state)[sub], state.cond[sub])
            features = pred.index_put((sub,), exact.to(pred.dtype))
            self.top1[rows[need]] = logits[: int(need.sum())].argmax(-1)
        self.features[idx] = features
        full = rows[need]
        self.calls[full] += 1
        self.skipped[rows] += 1
        self.skipped[full] = 0
        self.drift[rows] = signal
        self.drift[full] = 0
        if need.all():  # every row ran the base: its logits, as a full step's
            return Proposal("full", logits, features, calls=("shortcut", "full"))
        calls = ("shortcut", "full") if need.any() else ("shortcut",)
        return Proposal("shortcut", None, features, calls=calls, ran={"full": need})

    def signal(self, base, state, h: torch.Tensor, pred: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """(R,) the configured signal of each running row, from the conditional branch's features."""
        k = self.counts[state.t]
        return step_signal(self.config.signal, base, state.tokens, h, pred, self.drift[rows], self.top1[rows], k)


def step_signal(name: str, base, tokens: torch.Tensor, h: torch.Tensor, pred: torch.Tensor, drift: torch.Tensor,
                top1: torch.Tensor, k: int) -> torch.Tensor:
    """Signal `name` (`SIGNALS`) of each row (R,), before a base call: `tokens` (R, L) the step's
    state, h / pred (R, L, D) the features the shortcut predicted from and its prediction, `drift`
    (R,) the change summed since the last full step, `top1` (R, L) that step's top-1 codes, k the
    tokens the step fixes."""
    masked = tokens == base.mask_id
    if name == "change":
        step = (pred - h).float().norm(dim=-1) / h.float().norm(dim=-1).clamp_min(1e-6)
        return drift + (step * masked).sum(1) / masked.sum(1).clamp_min(1)
    grid = torch.arange(base.num_tokens, device=pred.device).expand(pred.shape[0], -1)
    probs = torch.softmax(base.head_at(pred, grid).float(), dim=-1)
    top, best = probs.max(-1)
    k = max(1, min(k, int(masked.sum(1).min())))
    about = top.masked_fill(~masked, -1.0).topk(k, dim=-1)  # the positions about to be fixed
    if name == "confidence":
        return 1 - about.values.mean(1)
    return (best.gather(1, about.indices) != top1.gather(1, about.indices)).float().mean(1)


class AdaptiveShortcut(Method):
    name = "adaptive-shortcut"
    summary = "adaptive full steps: per sample, the base where a signal of the shortcut's prediction says so"
    knobs = AdaptiveShortcutConfig
    needs_shortcut = True
    budget = "optional"
    own_placement = True
    adaptive = True
    colour = "tab:olive"

    def full_steps(self, steps, budget, knobs, rounding):
        """[0] (every sample's first step), once the cap is known to be honoured: a sample may run all
        N steps, and `max_skip` then asks for ceil(N / (max_skip + 1)) full steps."""
        knobs = knobs or self.default_knobs()
        cap = budget if budget is not None else knobs.budget
        least = math.ceil(steps / (knobs.max_skip + 1))
        if cap is not None and cap < least:
            raise ValueError(f"{arg('budget', cap)} cannot be honoured: {self.name} with max_skip={knobs.max_skip} "
                             f"runs up to {least} full steps per sample at {steps} steps (give a budget >= {least} "
                             "or a larger max_skip)")
        return [0]

    def policy(self, full_steps, *, shortcut, counts, knobs):
        return AdaptiveStepPolicy(shortcut, counts, knobs or self.default_knobs())


METHOD = AdaptiveShortcut()
