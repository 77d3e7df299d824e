"""Does a lossy store cost sampled quality? Two shortcuts, one per store, sampled on the same samples.

    python benchmarks/codec_quality.py runs/sc-bf16 runs/sc-delta --store runs/store-bf16 --budgets 4,6

Both shortcuts (trained with the same seed and steps from stores of the same trajectories in two
codecs) sample the bench set's held-out prompts with the same per-sample seeds, at N steps and each
budget B on the uniform full-step placement. Quality is scored by the recipe's bench metrics with
one shared set of bootstrap resamples, so the difference of each metric comes with a paired
interval: "within each other's paired intervals" means the interval of (second - first) holds 0,
and each is `front.at_least_as_good` as the other. With `--store` (the lossless one), both shortcuts
are also scored on its validation trajectories (clean targets): val_mse, top-1 agreement, KL, the
figures `migmcut train` reports, as `train.evaluate` computes them. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch

from migmcut import bench as lib
from migmcut import front
from migmcut.base import load_base
from migmcut.metrics import MetricSettings, build_metrics, measure_resampled
from migmcut.policies import full_steps_for
from migmcut.recipe import load_recipe
from migmcut.shortcut import ShortcutInputs, load_shortcut, resolve_checkpoint
from migmcut.store import PairDataset, TrajectoryStore, pair_loader
from migmcut.train import evaluate


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def clean_validation(store_url: str, nets: dict, base, meta: dict) -> dict:
    """Each shortcut's held-out figures on `store_url`'s validation split (the split train used)."""
    store = TrajectoryStore(store_url)
    tmeta = meta.get("train", {})
    _, val_idx = store.split(tmeta.get("val_fraction", 0.05), seed=tmeta.get("seed", 0))
    out = {}
    for name, net in nets.items():
        data = PairDataset(store, val_idx, seed=0, shuffle=False, rank=0, world=1)
        figures = evaluate(net, base, pair_loader(data, 64, 0), ShortcutInputs(base, torch.device("cpu")),
                           max_pairs=10**9)
        out[name] = {k: round(v, 6) for k, v in figures.items()}
    out["val_trajectories"] = int(len(val_idx))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("first", help="shortcut checkpoint (a directory or builtin:NAME), e.g. trained from the bf16 store")
    ap.add_argument("second", help="shortcut checkpoint directory (e.g. trained from the delta store)")
    ap.add_argument("--recipe", default="tiny-shapes")
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--budgets", default="4,6")
    ap.add_argument("--num-samples", type=int, default=384)
    ap.add_argument("--seed", type=int, default=0, help="sample seeds, as bench --seed")
    ap.add_argument("--store", default=None, help="lossless store: also score both on its validation split")
    args = ap.parse_args()

    torch.manual_seed(0)
    rec = load_recipe(args.recipe)
    base = load_base(rec.base, torch.device("cpu"), torch.float32)
    nets, metas = {}, {}
    for path in (args.first, args.second):
        net, meta = load_shortcut(resolve_checkpoint(path), base)
        nets[path], metas[path] = net.float().eval(), meta
    metrics = build_metrics(list(rec.bench.metrics), MetricSettings())
    higher = {m.primary: m.higher_is_better for m in metrics}
    conditions = lib.expand(lib.default_prompts(rec), args.num_samples)
    plan = lib.Plan(sampler=rec.sampler, configs=[], conditions=conditions,
                    seeds=lib.sample_seeds(args.seed, len(conditions)), batch_size=rec.bench.batch_size)
    indices = front.bootstrap_indices(len(conditions), rec.bench.bootstrap)
    result: dict = {"steps": args.steps, "num_samples": len(conditions), "seed": args.seed,
                    "shortcuts": [args.first, args.second], "budgets": {}}
    with torch.no_grad():
        for B in lib.parse_int_list(args.budgets, "budgets"):
            cfg = lib.Configuration("shortcut", args.steps, B,
                                    full_steps_for("shortcut", args.steps, B, rounding=rec.sampler.budget_rounding),
                                    "uniform")
            scores = {}
            for path, net in nets.items():
                log(f"B={B}: sampling {len(conditions)} with {path}")
                images, _ = lib.generate_images(base, plan, cfg, net)
                quality, resamplers = measure_resampled(metrics, images, conditions)
                point = {m: quality[m] for m in higher if quality.get(m) is not None}
                scores[path] = front.scores(point, resamplers, indices)
            a, b = (scores[p] for p in (args.first, args.second))
            row = {}
            for m in higher:
                diff = b.draws[m] - a.draws[m]
                lo, hi = np.quantile(diff, [0.025, 0.975])
                row[m] = {"first": round(a.point[m], 6), "second": round(b.point[m], 6),
                          "first_interval": [round(v, 6) for v in a.interval(m)],
                          "second_interval": [round(v, 6) for v in b.interval(m)],
                          "second_minus_first": round(b.point[m] - a.point[m], 6),
                          "paired_interval": [round(float(lo), 6), round(float(hi), 6)]}
            row["second_as_good_as_first"] = front.at_least_as_good(b, a, higher)
            row["first_as_good_as_second"] = front.at_least_as_good(a, b, higher)
            result["budgets"][B] = row
            log(json.dumps(row))
        if args.store:
            log(f"validation on {args.store}")
            result["clean_validation"] = clean_validation(args.store, nets, base, metas[args.first])
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
