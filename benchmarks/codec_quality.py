"""Does a lossy store cost sampled quality? Shortcuts, one per store, sampled on the same samples.

    python benchmarks/codec_quality.py runs/sc-bf16 runs/sc-delta --store runs/store-bf16 --budgets 4,6

The shortcuts (e.g. trained with the same seed and steps from stores of the same trajectories in
two codecs) sample the bench set's held-out prompts with the same per-sample seeds, at N steps and
each budget B on the uniform full-step placement. Quality is scored by the recipe's bench metrics
with one shared set of bootstrap resamples, so each later shortcut's difference from the first
comes with a paired interval: "within each other's paired intervals" means the interval of (later -
first) holds 0 on every metric, i.e. each is `front.at_least_as_good` as the other. A third or
fourth shortcut (another training seed) shows how far training alone moves the same figures. With
`--store` (the lossless one), each shortcut is also scored on that store's trajectories held out from
its own training split (clean targets): val_mse, top-1 agreement, KL, as `train.evaluate` computes
them. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch

from migmcut import benchmark as lib
from migmcut import front
from migmcut.base import load_base
from migmcut.cli.common import parse_int_list
from migmcut.metrics import build_metrics, default_metric_names, measure_resampled
from migmcut.placement import budget_schedule
from migmcut.recipe import load_recipe
from migmcut.shortcut import ShortcutInputs, load_shortcut, resolve_checkpoint
from migmcut.store import PairDataset, TrajectoryStore, pair_loader
from migmcut.training import evaluate


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def clean_validation(store_url: str, net, base, meta: dict) -> dict:
    """A shortcut's held-out figures on `store_url`'s validation split (the split its training used)."""
    store = TrajectoryStore(store_url)
    tmeta = meta.get("train", {})
    _, val_idx = store.split(tmeta.get("val_fraction", 0.05), seed=tmeta.get("seed", 0))
    data = PairDataset(store, val_idx, seed=0, shuffle=False, rank=0, world=1)
    figures = evaluate(net, base, pair_loader(data, 64, 0), ShortcutInputs(base, torch.device("cpu")), max_pairs=10**9)
    return {**{k: round(v, 6) for k, v in figures.items()}, "val_trajectories": int(len(val_idx))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("shortcuts", nargs="+", help="shortcut checkpoints (directories or builtin:NAME); the first is "
                    "the one the others are compared with, e.g. the one trained from the bf16 store")
    ap.add_argument("--recipe", default="tiny-shapes")
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--budgets", default="4,6")
    ap.add_argument("--num-samples", type=int, default=384)
    ap.add_argument("--seed", type=int, default=0, help="sample seeds, as bench --seed")
    ap.add_argument("--store", default=None, help="lossless store: also score each shortcut on its held-out split")
    args = ap.parse_args()
    if len(set(args.shortcuts)) < 2:
        ap.error("give at least two different shortcuts")

    torch.manual_seed(0)
    rec = load_recipe(args.recipe)
    base = load_base(rec.base, torch.device("cpu"), torch.float32)
    nets, metas = {}, {}
    for path in dict.fromkeys(args.shortcuts):  # in order, each once
        net, meta = load_shortcut(resolve_checkpoint(path), base)
        nets[path], metas[path] = net.float().eval(), meta
    names = list(rec.bench.metrics) or default_metric_names(rec.base.kind)  # as bench picks them
    metrics = build_metrics(names, lib.metric_settings(rec, "cpu"))
    higher = {m.primary: m.higher_is_better for m in metrics}
    conditions = lib.expand(lib.default_prompts(rec), args.num_samples)
    plan = lib.Plan(sampler=rec.sampler, configs=[], conditions=conditions,
                    seeds=lib.sample_seeds(args.seed, len(conditions)), batch_size=rec.bench.batch_size)
    indices = front.bootstrap_indices(len(conditions), rec.bench.bootstrap)
    tails = [(1 - plan.level) / 2, (1 + plan.level) / 2]
    result: dict = {"steps": args.steps, "num_samples": len(conditions), "seed": args.seed,
                    "shortcuts": list(nets), "budgets": {}}
    with torch.no_grad():
        for B in parse_int_list(args.budgets, "budgets"):
            cfg = lib.Configuration("shortcut", args.steps, B,
                                    budget_schedule(args.steps, B, rec.sampler.budget_rounding),
                                    "uniform")
            scores = {}
            for path, net in nets.items():
                log(f"B={B}: sampling {len(conditions)} with {path}")
                images, _ = lib.generate_images(base, plan, cfg, net)
                quality, resamplers = measure_resampled(metrics, images, conditions)
                point = {m: quality[m] for m in higher if quality.get(m) is not None}
                scores[path] = front.scores(point, resamplers, indices)
            first = next(iter(scores))
            row = {p: {m: {"point": round(sc.point[m], 6), "interval": [round(v, 6) for v in sc.interval(m, plan.level)]}
                       for m in higher} for p, sc in scores.items()}
            for p, sc in list(scores.items())[1:]:
                versus = {}
                for m in higher:
                    lo, hi = np.quantile(sc.draws[m] - scores[first].draws[m], tails)
                    versus[m] = {"difference": round(sc.point[m] - scores[first].point[m], 6),
                                 "paired_interval": [round(float(lo), 6), round(float(hi), 6)]}
                versus["as_good_as_first"] = front.at_least_as_good(sc, scores[first], higher, plan.level)
                versus["first_as_good"] = front.at_least_as_good(scores[first], sc, higher, plan.level)
                row[p]["versus_first"] = versus
            result["budgets"][B] = row
            log(json.dumps(row))
        if args.store:
            log(f"validation on {args.store}")
            result["clean_validation"] = {p: clean_validation(args.store, net, base, metas[p]) for p, net in nets.items()}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
