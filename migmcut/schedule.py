"""Unmasking schedules: how many tokens each of the N steps fixes.

`gamma(x)` is the fraction of positions still masked at progress x in [0, 1] (1 at x=0, 0 at
x=1) for the curves `CURVES`. `tokens_per_step(L, N, name)` turns a curve into integers
k_0..k_{N-1}, each >= 1, summing to exactly L. Two more names are the integer counts of
reference code, computed as it does (in float32, with its rounding):
- `maskgit`: valeoai/Maskgit-pytorch v1 (674ef1d) `Trainer/vit.py` `adap_sche` with mode
  arccos, also the paper's (Kaiwen-Zhu/MIGM-Shortcut 93349c4 `MaskGIT-Shortcut/Trainer/vit.py`):
  shares proportional to arccos(r) over r = linspace(1, 0, N), rounded half-even, 0 raised
  to 1, the remainder added to the last step.
- `dimoo`: Alpha-VLLM/Lumina-DiMOO (81344e6) `generators/image_generation_generator.py`
  `generate_image` with `cosine_schedule`: before the last step keep
  max(1, floor(L cos(pi/2 (t + 1) / N))) masked (at least one fixed), none after it.
- `amused`: diffusers' `AmusedScheduler.step` (0.42.1, masking_schedule cosine, starting_mask_ratio 1):
  before the last step keep mask_len = floor(L cos((t + 1) / N * pi / 2)) masked, computed in float32
  as the scheduler does, then min(still masked - 1, .) and max(1, .); none after it (timestep 0).
A reference count that leaves a step nothing to fix (the reference would skip the step) is
refused: the sampler runs exactly N steps.

Where the B full steps of a budget go is `placement.budget_schedule(N, B, rounding)`.
"""

from __future__ import annotations

import math

import torch

CURVES = ("arccos", "cosine", "linear")
SCHEDULES = CURVES + ("maskgit", "dimoo", "amused")


def gamma(name: str, x: float) -> float:
    if name == "cosine":
        return math.cos(0.5 * math.pi * x)
    if name == "arccos":
        return math.acos(x) / (0.5 * math.pi)
    if name == "linear":
        return 1.0 - x
    raise ValueError(f"unknown schedule {name!r} (choose from {', '.join(CURVES)})")


def tokens_per_step(num_tokens: int, steps: int, name: str) -> list[int]:
    if not 1 <= steps <= num_tokens:
        raise ValueError(f"steps must be between 1 and the number of tokens ({num_tokens}), got {steps}")
    if name in REFERENCE:
        counts = REFERENCE[name](num_tokens, steps)
        if min(counts) < 1:
            raise ValueError(f"the {name} schedule leaves step {counts.index(min(counts))} of {steps} nothing to fix "
                             f"at {num_tokens} tokens: use fewer steps")
        return counts
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


def _maskgit(num_tokens: int, steps: int) -> list[int]:
    if steps == 1:  # the reference's shares are 0 / 0 here
        return [num_tokens]
    share = torch.arccos(torch.linspace(1, 0, steps)) / (math.pi * 0.5)
    counts = (share / share.sum() * num_tokens).round()
    counts[counts == 0] = 1
    counts[-1] += num_tokens - counts.sum()
    return counts.int().tolist()


def _dimoo(num_tokens: int, steps: int) -> list[int]:
    counts, masked = [], num_tokens
    for t in range(steps):
        keep = 0
        if t < steps - 1:  # one float32 element per step, as the reference computes it
            frac = torch.cos(0.5 * math.pi * torch.tensor([(t + 1) / steps]))
            keep = int((torch.tensor([float(num_tokens)]) * frac).floor().clamp_min(1).item())
        keep = max(min(keep, masked - 1), 0)  # the reference fixes at least one while any is masked
        counts.append(masked - keep)
        masked = keep
    return counts


def _amused(num_tokens: int, steps: int) -> list[int]:
    counts, masked = [], num_tokens
    for t in range(steps):
        keep = 0
        if t < steps - 1:  # AmusedScheduler.step at step_idx t (timestep != 0), its tensor ops in order
            ratio = (torch.tensor([[t]]) + 1) / steps  # float32
            mask_ratio = 1.0 * torch.cos(ratio * math.pi / 2)  # starting_mask_ratio 1
            mask_len = (num_tokens * mask_ratio).floor()
            mask_len = torch.min(torch.tensor([[masked]]) - 1, mask_len)
            keep = int(torch.max(torch.tensor([1]), mask_len).item())
        counts.append(masked - keep)  # 0 only where one position is left before the last step (never at N <= L)
        masked = keep
    return counts


REFERENCE = {"maskgit": _maskgit, "dimoo": _dimoo, "amused": _amused}  # the reference codes' integer counts
