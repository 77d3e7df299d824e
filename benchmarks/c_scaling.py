"""How the shortcut's cost ratio c scales with the base's width D and depth (layers).

    OMP_NUM_THREADS=1 python benchmarks/c_scaling.py --batch-size 16

c = one shortcut call / one base forward, both with CFG at the generation batch size (the
`measure_c` of `migmcut bench`), on random-weight tiny-shapes bases of each size (timing does
not depend on the weights) with the recipe's shortcut (ratio 2, one block). Prints a table and
one JSON object.
"""

from __future__ import annotations

import argparse
import json

import torch

from migmcut.base import load_base
from migmcut.benchmark import bound, measure_c
from migmcut.recipe import load_recipe
from migmcut.shortcut import Shortcut, ShortcutConfig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--widths", default="64,128,256")
    p.add_argument("--depths", default="4,8,16")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    torch.set_grad_enabled(False)
    rows = []
    print(f"{'D':>5} {'layers':>6} {'base ms':>9} {'shortcut ms':>12} {'c':>7} {'bound 16/4':>11}")
    for d in map(int, args.widths.split(",")):
        for layers in map(int, args.depths.split(",")):
            recipe = load_recipe("tiny-shapes", ["base.weights=random", f"base.hidden_size={d}",
                                                 f"base.num_layers={layers}", f"base.num_heads={max(1, d // 32)}"])
            base = load_base(recipe.base)
            net = Shortcut(ShortcutConfig.from_recipe(recipe.shortcut, base.feature_dim, base.condition_dim))
            c = measure_c(base, net, recipe.sampler, args.batch_size, args.repeats)
            row = {"D": d, "layers": layers, **{k: round(v, 5) for k, v in c.items()},
                   "bound_16_4": round(bound(16, 4, c["c"]), 3)}
            rows.append(row)
            print(f"{d:>5} {layers:>6} {1e3 * c['base_forward_s']:>9.1f} {1e3 * c['shortcut_s']:>12.2f} "
                  f"{c['c']:>7.3f} {row['bound_16_4']:>11.2f}", flush=True)
    print(json.dumps({"batch_size": args.batch_size, "threads": torch.get_num_threads(), "rows": rows}))


if __name__ == "__main__":
    main()
