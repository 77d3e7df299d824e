"""Where adaptive full steps stand: how well each adaptive-shortcut signal predicts a step that needs the
base, and per-sample base calls against quality, on selection-set samples (never the bench set).

1. Signals. Vanilla's trajectories (every step a full base call); beside them the shortcut carries the
   features forward from an anchor every `--every` steps (max_skip + 1: the policy's longest run of
   shortcut steps), and before each other step the signals are read as adaptive-shortcut reads them
   (`step_signal`). The error the shortcut makes there, against the exact step: `rel_error`, the
   relative feature error at the masked positions, and `token_error`, the fraction of the k_t
   positions the exact step is most confident about whose top-1 code the shortcut gets wrong. A step
   "needs the base" where its error is above the `--quantile` quantile of all steps' errors; each
   signal's AUC against that (0.5: chance; 1: perfect) and its Spearman correlation with the error.
2. Base calls against quality. adaptive-shortcut (or `--method`) at each `--thresholds` value on the
   same samples: per sample its base calls and whether the checker finds the prompt in the image,
   by number of base calls; with `--c` (one shortcut call over one base forward, e.g. bench.json's
   timing.c), the ceiling N / (base calls + c shortcut calls) per sample on average.

    python benchmarks/adaptive_signals.py --recipe tiny-shapes --num-samples 96 --c 0.12 --out runs/signals31.json
    python benchmarks/adaptive_signals.py --recipe debug --shortcut CKPT --num-samples 4 --out /tmp/signals.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import torch

from migmcut.base import load_base
from migmcut.benchmark import expand, sample_seeds
from migmcut.errors import UserError
from migmcut.methods.adaptive_shortcut import SIGNALS, step_signal
from migmcut.methods.shortcut import new_token_inputs
from migmcut.policies import Policy, Proposal, branch_count, branch_rows
from migmcut.recipe import load_recipe
from migmcut.runner import resolve_run
from migmcut.shortcut import ShortcutInputs, load_shortcut, resolve_checkpoint
from migmcut.world import prompt_sets
from migmcut.world.checker import check


class Probe(Policy):
    """Vanilla's steps, with the shortcut's rollout from an anchor every `every` steps measured beside them."""

    def __init__(self, shortcut, counts: list[int], every: int):
        self.shortcut, self.counts, self.every = shortcut, counts, every
        self.inputs = self.conditioned = self.carried = self.drift = self.top1 = None
        self.records: list[dict] = []

    @torch.no_grad()
    def step(self, base, state):
        logits, features = base(branch_rows(state), state.cond)
        B = state.tokens.shape[0]
        if self.inputs is None:
            self.inputs = ShortcutInputs(base, base.device, features.dtype)
            self.conditioned = self.inputs.condition(state.cond)
        if state.t % self.every == 0:  # an anchor: the shortcut starts again from exact features
            self.carried, self.drift, self.top1 = features, torch.zeros(B, device=features.device), logits[:B].argmax(-1)
            return Proposal("full", logits, features)
        pred = self.shortcut(self.carried, **new_token_inputs(base, self.inputs, state, branch_count(state)),
                             **self.conditioned)
        k = self.counts[state.t]
        values = {name: step_signal(name, base, state.tokens, self.carried[:B], pred[:B], self.drift, self.top1, k)
                  for name in SIGNALS}
        masked = state.tokens == base.mask_id
        err = (pred - features)[:B].float().norm(dim=-1) / features[:B].float().norm(dim=-1).clamp_min(1e-6)
        rel = (err * masked).sum(1) / masked.sum(1).clamp_min(1)
        exact = torch.softmax(logits[:B].float(), dim=-1).max(-1)
        grid = torch.arange(base.num_tokens, device=pred.device).expand(B, -1)
        guess = base.head_at(pred[:B], grid).argmax(-1)
        about = exact.values.masked_fill(~masked, -1.0).topk(max(1, min(k, int(masked.sum(1).min()))), dim=-1).indices
        token = (guess.gather(1, about) != exact.indices.gather(1, about)).float().mean(1)
        for i in range(B):
            self.records.append({"t": state.t, "since_anchor": state.t % self.every, "rel_error": float(rel[i]),
                                 "token_error": float(token[i]), **{n: float(v[i]) for n, v in values.items()}})
        self.carried, self.drift = pred, values["change"]
        return Proposal("full", logits, features)


def ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (1-based; ties share their mean rank)."""
    order = np.argsort(x, kind="mergesort")
    r = np.empty(len(x))
    r[order] = np.arange(1, len(x) + 1)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=r)
    return (sums / counts)[inverse]


def auc(score: np.ndarray, label: np.ndarray) -> float | None:
    """P(score of a positive > score of a negative) (Mann-Whitney); None without both classes."""
    pos, neg = int(label.sum()), int((~label).sum())
    if not pos or not neg:
        return None
    return float((ranks(score)[label].sum() - pos * (pos + 1) / 2) / (pos * neg))


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def signal_report(records: list[dict], quantile: float) -> dict:
    out = {"steps_measured": len(records), "quantile": quantile, "signals": {}}
    for error in ("rel_error", "token_error"):
        e = np.array([r[error] for r in records])
        need = e > np.quantile(e, quantile)
        for name in SIGNALS:
            s = np.array([r[name] for r in records])
            out["signals"].setdefault(name, {})[f"auc_{error}"] = auc(s, need)
            out["signals"][name][f"spearman_{error}"] = spearman(s, e)
    by = {}
    for r in records:
        by.setdefault(r["since_anchor"], []).append(r["rel_error"])
    out["rel_error_by_steps_since_anchor"] = {k: float(np.mean(v)) for k, v in sorted(by.items())}
    return out


def calls_report(run, base, prompts: list[str], seeds: list[int], batch_size: int, c: float | None) -> dict:
    calls, steps, short, ok = [], [], [], []
    for lo, result in run.batches(prompts, seeds, batch_size):
        images = base.decode(result.tokens)
        ok += [check(im, p).ok for im, p in zip(images, prompts[lo:lo + batch_size])]
        calls += result.per_sample["full"].tolist()
        steps += result.per_sample["steps"].tolist()
        short += result.per_sample.get("shortcut", torch.zeros(len(result.tokens), dtype=torch.long)).tolist()
    calls, ok = np.array(calls), np.array(ok, dtype=np.float64)
    N = run.sampler.steps
    out = {"mean_base_calls": float(calls.mean()), "mean_steps": float(np.mean(steps)),
           "mean_shortcut_calls": float(np.mean(short)), "prompt_accuracy": float(ok.mean()),
           "by_base_calls": {int(n): {"samples": int((calls == n).sum()), "prompt_accuracy": float(ok[calls == n].mean())}
                             for n in np.unique(calls)}}
    if c is not None:
        out["ceiling"] = float(np.mean(N / (calls + c * np.array(short))))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="tiny-shapes")
    ap.add_argument("--shortcut", default=None, help="checkpoint (default: the recipe's)")
    ap.add_argument("--num-samples", type=int, default=96)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--every", type=int, default=4, help="anchor every this many steps (max_skip + 1)")
    ap.add_argument("--quantile", type=float, default=0.5, help="errors above this quantile need the base")
    ap.add_argument("--method", default="adaptive-shortcut", choices=("adaptive-shortcut", "adaptive-combined"))
    ap.add_argument("--signal", default=None, help="the method's signal (default: the recipe's)")
    ap.add_argument("--thresholds", default="0.05,0.1,0.2,0.3", help="comma-separated, for part 2")
    ap.add_argument("--c", type=float, default=None, help="shortcut call / base forward (bench.json timing.c)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True, help="a JSON file")
    args = ap.parse_args(argv)
    try:
        recipe = load_recipe(args.recipe)
        checkpoint = args.shortcut or resolve_checkpoint(recipe.shortcut.checkpoint)
        if checkpoint is None:
            raise UserError("no shortcut checkpoint: pass --shortcut DIR")
        if not 1 <= args.every <= recipe.sampler.steps or not 0 < args.quantile < 1:
            raise UserError("--every must be between 1 and N, --quantile between 0 and 1")
        base = load_base(recipe.base)
        net, _ = load_shortcut(checkpoint, base)
        prompts = expand(prompt_sets.load("selection"), args.num_samples)
        seeds = sample_seeds(args.seed, len(prompts))
        vanilla = resolve_run(base, recipe.sampler, "vanilla")
        records = []
        for lo in range(0, len(prompts), args.batch_size):
            probe = Probe(net, vanilla.counts, args.every)
            vanilla.sample(prompts[lo:lo + args.batch_size], seeds[lo:lo + args.batch_size], policy=probe)
            records += probe.records
            print(f"signals {min(lo + args.batch_size, len(prompts))}/{len(prompts)}", file=sys.stderr)
        report = {"recipe": recipe.name, "prompts": "selection-set", "num_samples": len(prompts), "every": args.every,
                  **signal_report(records, args.quantile), "base_calls_vs_quality": {}}
        knobs = recipe.knobs_for(args.method)
        for value in (float(v) for v in args.thresholds.split(",")):
            chosen = dataclasses.replace(knobs, threshold=value, signal=args.signal or knobs.signal)
            run = resolve_run(base, recipe.sampler, args.method, shortcut=net, knobs=chosen)
            key = f"{chosen.signal}@{value}"
            report["base_calls_vs_quality"][key] = calls_report(run, base, prompts, seeds, args.batch_size, args.c)
            print(f"base calls vs quality {key}", file=sys.stderr)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    for name, figures in report["signals"].items():
        print(f"{name}: " + ", ".join(f"{k}={None if v is None else round(v, 3)}" for k, v in figures.items()))
    for key, figures in report["base_calls_vs_quality"].items():
        print(f"{args.method} {key}: mean base calls {figures['mean_base_calls']:.2f}, steps {figures['mean_steps']:.2f}, "
              f"prompt accuracy {figures['prompt_accuracy']:.3f}" + (f", ceiling {figures['ceiling']:.2f}x" if "ceiling" in figures else ""))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
