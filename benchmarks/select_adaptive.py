"""Choose the adaptive methods' knobs on the selection set (never the bench set): one bench of the knob
sweeps on `--prompts selection-set`, then per method the cheapest configuration at least as good as
vanilla-N, the bench's reference (paired bootstrap on every metric), or the best one where none is.

    python benchmarks/select_adaptive.py --recipe tiny-shapes --num-samples 96 --out runs/select31
    python benchmarks/select_adaptive.py --recipe debug --shortcut CKPT --num-samples 8 --metrics prompt_accuracy --out /tmp/s

Prints one line per method (the chosen `--methods` entry and its figures) and the bench command
lines with them; writes OUT/selection.json (every row, and the choice) beside the bench's files.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import migmcut
from migmcut.errors import UserError
from migmcut.methods import get_method
from migmcut.recipe import load_recipe
from migmcut.shortcut import resolve_checkpoint

SWEEPS = [  # method entries (NAME@KNOB=V1/V2): the grid each method is chosen from
    "adaptive@threshold=0.7/0.8/0.9/0.95/0.98/0.99",
    "adaptive-shortcut@signal=change@threshold=0.05/0.1/0.2/0.3/0.5@max_skip=3/5",
    "adaptive-shortcut@signal=confidence@threshold=0.1/0.2/0.3/0.5",
    "adaptive-shortcut@signal=disagreement@threshold=0.05/0.1/0.2/0.4",
    "adaptive-combined@tokens=0.9/0.95/0.98/0.99@threshold=0.1/0.2/0.3",
]


def entry_of(row: dict) -> str:
    """The `--methods` entry that runs this row again."""
    cap = "" if row["budget"] is None else f":{row['budget']}"
    return row["method"] + cap + "".join(f"@{k}={v}" for k, v in (row.get("knobs") or {}).items())


def choose(rows: list[dict], cost: str, quality) -> dict[str, dict]:
    """Per adaptive method: its cheapest row at least as good as vanilla-N, the bench's reference
    (`matches_reference`: paired bootstrap on every metric; by `cost`: seconds per image, or base
    calls per sample), else its row of the best `quality(row)` (higher is better)."""
    chosen = {}
    for method in dict.fromkeys(r["method"] for r in rows if get_method(r["method"]).adaptive):
        mine = [r for r in rows if r["method"] == method]
        good = [r for r in mine if r["matches_reference"]]
        by_cost = (lambda r: r["seconds_per_image"]) if cost == "seconds" else (lambda r: r["base_calls"])
        pick = min(good, key=by_cost) if good else max(mine, key=quality)
        chosen[method] = {"entry": entry_of(pick), "label": pick["label"], "reached_target": bool(good), "row": pick}
    return chosen


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="tiny-shapes")
    ap.add_argument("--shortcut", default=None, help="checkpoint (default: the recipe's)")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--methods", default=None, help="comma-separated entries to sweep (default: SWEEPS)")
    ap.add_argument("--cost", choices=("seconds", "base_calls"), default="seconds")
    ap.add_argument("--num-samples", type=int, default=96)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--metrics", default=None, help="comma-separated (default: the recipe's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args(argv)
    try:
        recipe = load_recipe(args.recipe)
        entries = args.methods.split(",") if args.methods else list(SWEEPS)
        shortcut = args.shortcut or resolve_checkpoint(recipe.shortcut.checkpoint)
        if shortcut is None:
            dropped = [e for e in entries if get_method(e.split("@")[0].split(":")[0]).needs_shortcut]
            if dropped:
                print(f"no shortcut checkpoint: skipping {', '.join(dropped)}", file=sys.stderr)
            entries = [e for e in entries if e not in dropped]
        steps = args.steps or recipe.bench.steps or recipe.sampler.steps
        run = migmcut.bench(recipe, shortcut=shortcut, steps=steps, methods=["vanilla", *entries],
                            prompts="selection-set", num_samples=args.num_samples,
                            batch_size=args.batch_size, repeats=args.repeats,
                            metrics=args.metrics.split(",") if args.metrics else None, seed=args.seed,
                            out=args.out, overwrite=args.overwrite,
                            progress=lambda what, done, total: print(f"{what} {done}/{total or '?'}", file=sys.stderr))
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    primary, sign = run.result.primary, 1.0 if run.result.higher_is_better else -1.0
    target = f"vanilla-{steps}"
    chosen = choose(run.result.rows, args.cost,
                    lambda r: sign * (r["quality"].get(primary) or 0.0))
    figures = ("seconds_per_image", "base_calls_mean", "steps_mean", "front_vanilla_fixed", "front_speedup_fixed")
    for method, c in chosen.items():
        r = c["row"]
        quality = ", ".join(f"{m}={r['quality'].get(m)}" for m in run.result.higher)
        print(f"{method}: {c['entry']}  ({'as good as' if c['reached_target'] else 'best quality, below'} {target}; "
              f"{quality}; " + ", ".join(f"{k}={r.get(k)}" for k in figures) + ")")
    picked = ",".join(c["entry"] for c in chosen.values())
    for seed in (0, 1):
        print(f"migmcut bench --recipe {args.recipe} --steps {steps} --methods vanilla,cache:4,shortcut:3/4/6,{picked} "
              f"--seed {seed} --out runs/b31-n{steps}-s{seed}")
    out = Path(args.out) / "selection.json"
    out.write_text(json.dumps({"prompts": "selection-set", "num_samples": args.num_samples, "target": target,
                               "cost": args.cost, "chosen": chosen, "rows": run.result.rows}, indent=2) + "\n")
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
