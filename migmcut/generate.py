"""Library entry point for making images: recipe + conditions -> uint8 images."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import numpy as np
import torch

from migmcut.base import load_base
from migmcut.errors import UserError
from migmcut.policies import METHODS, NEEDS_SHORTCUT, PARTIAL, FullPolicy, PolicyKnobs, build, full_steps_for
from migmcut.recipe import Recipe
from migmcut.sampler import sample, trajectory_seed
from migmcut.shortcut import load_shortcut

@dataclass
class Generated:
    images: np.ndarray  # uint8 (n, H, W, 3)
    conditions: list
    seeds: list[int]
    method: str
    steps: int
    full_steps: list[int]  # the steps that ran the base
    base_calls: int  # full base steps per image
    shortcut_calls: int  # shortcut steps per image
    seconds: float  # sampling and decoding, every batch (not `on_batch`)
    load_seconds: float = 0.0  # loading the base and the shortcut, checking the conditions
    partial_calls: int = 0  # recap / mlcache / hybrid steps per image

    @property
    def budget(self) -> int:
        return len(self.full_steps)


def make_policy(method: str, steps: int, budget: int | None, shortcut, base, full_steps: list[int] | None = None,
                rounding: str = "half-up", knobs: PolicyKnobs | None = None, counts: list[int] | None = None):
    """-> (a factory of fresh per-batch policies, the steps that run the base).

    `full_steps`: an explicit schedule (e.g. a searched one) instead of the method's own placement
    (`policies.full_steps_for`); `knobs`: the recipe's recap / mlcache / hybrid sections;
    `counts`: the sampler's tokens fixed per step (recap).
    """
    knobs = knobs or PolicyKnobs()
    if method not in METHODS:
        raise UserError(f"--method {method!r}: choose one of {', '.join(METHODS)}")
    if method == "vanilla":
        if budget is not None and budget != steps:
            raise UserError(f"--budget {budget} needs an accelerated --method (vanilla runs every step)")
        return FullPolicy, list(range(steps))
    if budget is None and full_steps is None and method != "mlcache":
        raise UserError(f"--method {method} needs --budget B (full base steps out of {steps})")
    if method in PARTIAL:
        base._require_partial()
    if full_steps is None:
        try:
            full = full_steps_for(method, steps, budget, knobs, rounding)
        except ValueError as err:
            raise UserError(str(err)) from None
    else:
        full = [int(s) for s in full_steps]
    n = budget if budget is not None else len(full)
    if len(full) != n or full[0] != 0 or any(b <= a for a, b in zip(full, full[1:])) or full[-1] >= steps:
        raise UserError(f"full steps {full}: need {n} increasing steps below {steps}, starting at 0")
    net = None
    if method in NEEDS_SHORTCUT:
        if shortcut is None:
            raise UserError(f"--method {method} needs a shortcut checkpoint: pass --shortcut DIR (made by migmcut train)")
        if not isinstance(shortcut, torch.nn.Module):
            shortcut, _ = load_shortcut(shortcut, base)
        net = shortcut.to(device=base.device, dtype=next(base.parameters()).dtype)
    return (lambda: build(method, full, shortcut=net, counts=counts, knobs=knobs)), full


def generate(
    recipe: Recipe,
    conditions: list,
    *,
    num_images: int = 1,
    seed: int = 0,
    steps: int | None = None,
    method: str = "vanilla",
    budget: int | None = None,
    shortcut=None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    batch_size: int | None = None,
    base=None,
    on_batch=None,
    full_steps: list[int] | None = None,
) -> Generated:
    """Generate `num_images` images per condition; image j of condition i uses seed index i*num_images+j.

    `on_batch(images)` is called after each batch with its uint8 images, in order (e.g. to write them).
    `shortcut` is a checkpoint directory or a loaded `Shortcut` module, for method `shortcut`; `budget` is the number of full base steps for `cache` and `shortcut`; `full_steps` places them explicitly (e.g. `schedule_search.load_schedule(checkpoint, N, B)`) instead of uniformly.
    """
    loading = time.perf_counter()
    if not conditions:
        raise UserError("nothing to generate: give at least one --prompt (or --class)")
    if num_images < 1:
        raise UserError(f"--num-images must be >= 1, got {num_images}")
    for c in conditions:
        if isinstance(c, str) and not c.strip():
            raise UserError("empty prompt: give a caption such as 'a large red circle'")
    config = dataclasses.replace(recipe.sampler, steps=steps if steps is not None else recipe.sampler.steps)
    if config.steps < 1:
        raise UserError(f"--steps must be >= 1, got {config.steps}")
    if method not in METHODS:
        raise UserError(f"--method {method!r}: choose one of {', '.join(METHODS)}")
    if budget is not None and not 1 <= budget <= config.steps:
        raise UserError(f"--budget {budget} must be between 1 and the step count ({config.steps})")
    base = base if base is not None else load_base(recipe.base, device, dtype)
    if config.steps > base.num_tokens:
        raise UserError(f"--steps {config.steps} exceeds the number of image tokens ({base.num_tokens})")
    try:
        counts = config.check(base.num_tokens)
    except ValueError as err:
        raise UserError(f"sampler: {err}") from None
    base = base.to(device=device, dtype=dtype)
    if full_steps is not None and budget is None:
        budget = len(full_steps)
    policy_factory, full = make_policy(method, config.steps, budget, shortcut, base, full_steps,
                                       config.budget_rounding, PolicyKnobs.of(recipe), counts)
    jobs = [(c, trajectory_seed(seed, i * num_images + j)) for i, c in enumerate(conditions) for j in range(num_images)]
    base.encode_conditions(conditions)  # validate every condition before any work
    bs = batch_size or recipe.generate.batch_size
    images, counts, seconds = [], {}, 0.0
    load_seconds = time.perf_counter() - loading
    for lo in range(0, len(jobs), bs):
        chunk = jobs[lo : lo + bs]
        start = time.perf_counter()
        result = sample(base, [c for c, _ in chunk], [s for _, s in chunk], config, policy=policy_factory())
        images.append(base.decode(result.tokens))
        seconds += time.perf_counter() - start
        counts = result.counts
        if on_batch:
            on_batch(images[-1])
    return Generated(
        images=np.concatenate(images),
        conditions=[c for c, _ in jobs],
        seeds=[s for _, s in jobs],
        method=method,
        steps=config.steps,
        full_steps=full,
        base_calls=counts.get("full", 0),
        shortcut_calls=counts.get("shortcut", 0),
        partial_calls=sum(counts.get(k, 0) for k in PARTIAL),
        seconds=seconds,
        load_seconds=load_seconds,
    )
