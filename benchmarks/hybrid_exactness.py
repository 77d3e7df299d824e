"""How exact is the hybrid's "exact" evaluation? Its logits against the base's true ones.

    python benchmarks/hybrid_exactness.py --samples 32 --steps 16 --budget 4

At every hybrid step (the shortcut carries the features; the candidates the sampler ranks first
are re-run through the base against the keys/values cached at the last full step) this also runs
the full base forward on the same state, and compares, at the candidate positions:
- the partial evaluation's features and guided top-1 token with the full forward's, and
- the shortcut's predicted features and top-1 with the full forward's.
Both are grouped by k, the steps since the last full step. Selection-set prompts (never the bench
set), the shipped base and shortcut, the recipe's hybrid knobs. Prints a table and one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections import defaultdict

import torch

from migmcut.base import load_base
from migmcut.benchmark import expand, sample_seeds
from migmcut.placement import budget_schedule
from migmcut.methods.hybrid import HybridPolicy
from migmcut.policies import branch_count, branch_rows
from migmcut.recipe import load_recipe
from migmcut.sampler import guided, sample
from migmcut.shortcut import load_shortcut, resolve_checkpoint
from migmcut.world import prompt_sets


class Compared(HybridPolicy):
    """The hybrid, checking each refine call against a full forward of the same state."""

    def __init__(self, *args, sampler=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.sampler, self.since, self.stats = sampler, 0, defaultdict(lambda: defaultdict(list))

    def step(self, base, state):
        out = super().step(base, state)
        if out.kind == "full":
            self.since = 0
            return out
        self.since += 1
        branches = branch_count(state)
        true_logits, true_features = base(branch_rows(state), state.cond)
        predicted = self.features.clone()  # the shortcut's map before refine writes exact features in
        exact = out.refine

        def refine(where: torch.Tensor) -> torch.Tensor:
            logits = exact(where)
            at = where.repeat(branches, 1)
            pick = lambda x: x.gather(1, at[..., None].expand(-1, -1, x.shape[-1]))  # noqa: E731
            truth = self.top1(pick(true_logits), state.t)
            s = self.stats[self.since]
            s["exact_mse"].append(((pick(self.features) - pick(true_features)) ** 2).mean().item())
            s["shortcut_mse"].append(((pick(predicted) - pick(true_features)) ** 2).mean().item())
            s["exact_top1"].append((self.top1(logits, state.t) == truth).float().mean().item())
            s["shortcut_top1"].append((self.top1(base.head_at(pick(predicted), at), state.t) == truth).float().mean().item())
            return logits

        return dataclasses.replace(out, refine=refine)

    def top1(self, logits: torch.Tensor, t: int) -> torch.Tensor:
        """The guided argmax token of (B * branches, n, K) logits."""
        return guided(self.sampler, t, logits).argmax(-1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--budget", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=16)
    args = p.parse_args()
    torch.set_grad_enabled(False)
    recipe = load_recipe("tiny-shapes")
    base = load_base(recipe.base)
    net, _ = load_shortcut(resolve_checkpoint(recipe.shortcut.checkpoint), base)
    sampler = dataclasses.replace(recipe.sampler, steps=args.steps)
    knobs = recipe.knobs_for("hybrid")
    conditions = expand(prompt_sets.load("selection"), args.samples)
    seeds = sample_seeds(0, args.samples)
    merged = defaultdict(lambda: defaultdict(list))
    for lo in range(0, args.samples, args.batch_size):
        policy = Compared(budget_schedule(args.steps, args.budget), net, knobs.candidates, knobs.refresh_new,
                          knobs.context, sampler=sampler)
        sample(base, conditions[lo : lo + args.batch_size], seeds[lo : lo + args.batch_size], sampler, policy=policy)
        for k, s in policy.stats.items():
            for name, values in s.items():
                merged[k][name] += values
    table = {k: {name: sum(v) / len(v) for name, v in s.items()} for k, s in sorted(merged.items())}
    names = ["exact_mse", "shortcut_mse", "exact_top1", "shortcut_top1"]
    print(f"{'k':>3} " + " ".join(f"{n:>14}" for n in names))
    for k, row in table.items():
        print(f"{k:>3} " + " ".join(f"{row[n]:>14.4f}" for n in names))
    print(json.dumps({"samples": args.samples, "steps": args.steps, "budget": args.budget,
                      "hybrid": dataclasses.asdict(knobs), "by_k": table}))


if __name__ == "__main__":
    main()
