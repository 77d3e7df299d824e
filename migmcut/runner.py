"""One run, resolved once: the sampler settings, the method and where its full steps go, the policy
per batch, and the shortcut on the base's device and dtype. generate, bench, online training and
record all sample through a `Run`.

    run = resolve_run(base, recipe.sampler, "shortcut", budget=4, shortcut="runs/sc", knobs=recipe.knobs_for("shortcut"))
    for lo, result in run.batches(conditions, seeds, batch_size=16):
        images = base.decode(result.tokens)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from migmcut.errors import UserError, arg

from migmcut.methods import Method, get_method
from migmcut.recipe import SamplerConfig
from migmcut.sampler import SampleResult, sample
from migmcut.shortcut import load_shortcut


@dataclass
class Run:
    base: torch.nn.Module
    sampler: SamplerConfig  # steps = N
    method: Method
    full_steps: list[int]  # the steps that run the base
    shortcut: torch.nn.Module | None = None  # on the base's device and dtype
    knobs: object = None  # the method's recipe section
    counts: list[int] = dataclasses.field(default_factory=list)  # tokens fixed per step

    def policy(self):
        """A fresh policy for one batch."""
        return self.method.policy(self.full_steps, shortcut=self.shortcut, counts=self.counts, knobs=self.knobs)

    def sample(self, conditions: list, seeds: list[int], *, policy=None, observers: tuple = ()) -> SampleResult:
        """One batch; `policy` replaces the method's (a policy that also records, as online training's)."""
        return sample(self.base, conditions, seeds, self.sampler, policy=policy or self.policy(), observers=observers)

    def batches(self, conditions: list, seeds: list[int], batch_size: int) -> Iterator[tuple[int, SampleResult]]:
        """(index of the batch's first sample, its result) for each batch of `batch_size`, in order."""
        for lo in range(0, len(conditions), batch_size):
            yield lo, self.sample(conditions[lo : lo + batch_size], seeds[lo : lo + batch_size])


def resolve_run(base, sampler: SamplerConfig, method: str, *, budget: int | None = None,
                full_steps: list[int] | None = None, shortcut=None, knobs=None) -> Run:
    """The run of `method` on `base` with `sampler` (its `steps` is N): `budget` full base steps
    placed by the method (the uniform ones follow `sampler.budget_rounding`), or `full_steps`
    explicitly (e.g. a searched schedule); `shortcut` a checkpoint directory or a loaded network
    (methods that need one); `knobs` the method's recipe section (default: its defaults).
    Every refusal is a UserError of one line."""
    m = get_method(method)
    steps = sampler.steps
    try:
        counts = sampler.check(base.num_tokens)
    except ValueError as err:
        raise UserError(f"sampler: {err}") from None
    knobs = knobs if knobs is not None else m.default_knobs()
    if m.adaptive and budget is not None and knobs is not None and hasattr(knobs, "budget"):
        knobs = dataclasses.replace(knobs, budget=budget)  # an adaptive method's budget is a cap
    if knobs is not None and hasattr(knobs, "validate"):
        try:
            knobs.validate()
        except ValueError as err:
            raise UserError(f"{m.name}: {err}") from None
    if m.budget == "none":
        if budget is not None and budget != steps:
            raise UserError(f"{arg('budget', budget)} needs an accelerated {arg('method')} ({m.name} runs every step)")
        return Run(base, sampler, m, m.full_steps(steps, None, knobs, sampler.budget_rounding), None, knobs, counts)
    if budget is None and full_steps is None and m.budget == "required":
        raise UserError(f"{arg('method', m.name)} needs {arg('budget', 'B')} (full base steps out of {steps})")
    if m.needs_partial:
        base.require_partial()
    if full_steps is None:
        try:
            full = m.full_steps(steps, budget, knobs, sampler.budget_rounding)
        except ValueError as err:
            raise UserError(str(err)) from None
    else:
        full = [int(s) for s in full_steps]
    n = budget if budget is not None and not m.adaptive else len(full)
    if len(full) != n or full[0] != 0 or any(b <= a for a, b in zip(full, full[1:])) or full[-1] >= steps:
        raise UserError(f"full steps {full}: need {n} increasing steps below {steps}, starting at 0")
    net = None
    if m.needs_shortcut:
        if shortcut is None:
            raise UserError(f"{arg('method', m.name)} needs a shortcut checkpoint: pass {arg('shortcut', 'DIR')} "
                            "(made by migmcut train)")
        if not isinstance(shortcut, torch.nn.Module):
            shortcut, _ = load_shortcut(shortcut, base)
        net = shortcut.to(device=base.device, dtype=next(base.parameters()).dtype)
    return Run(base, sampler, m, full, net, knobs, counts)
