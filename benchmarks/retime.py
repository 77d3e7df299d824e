"""Time the configurations of finished bench runs again, side by side, without sampling anew.

    OMP_NUM_THREADS=1 python benchmarks/retime.py runs/bench-s0/bench.json runs/bench-s1/bench.json --repeats 5

A bench run scores quality on all its samples and times every configuration at the end; when
something else loaded the machine during that timing phase, its seconds are not worth quoting,
while its quality still is. This times the union of the runs' configurations in one quiet
round-robin (`bench.time_configurations`, the bench's own protocol, on the recipe's first bench
batch), measures c again, and writes `retimed.json` beside each bench.json: the rows with the new
seconds, speedup, front_speedup (against the front vanilla each run chose by quality; where a
row's `as_good_vanilla` list is there, the fastest of those under the new timing), ceiling and
bound. Speed depends on the configuration, not on the seed, so one timing serves every run.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
from pathlib import Path

import torch

from migmcut import bench as lib
from migmcut.base import load_base
from migmcut.recipe import load_recipe
from migmcut.shortcut import load_shortcut


def configs_of(rows: list[dict]) -> list[lib.Configuration]:
    return [lib.Configuration(r["method"], r["steps"], r["budget"], r.get("full_steps"), r.get("schedule"),
                              reference=i == 0) for i, r in enumerate(rows)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="bench.json files of runs made with one recipe and shortcut")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    torch.set_grad_enabled(False)
    runs = [json.loads(path.read_text()) for path in args.runs]
    settings = runs[0]["settings"]
    recipe = load_recipe(settings["recipe"])
    base = load_base(recipe.base, "cpu", torch.float32)
    net = None
    if settings.get("shortcut"):
        net, _ = load_shortcut(settings["shortcut"], base)
    configs = {}
    for run in runs:
        for cfg in configs_of(run["rows"]):
            configs.setdefault(cfg.label, cfg)
    bs = settings["batch_size"]
    prompts = lib.expand(lib.default_prompts(recipe), bs)
    sampler = dataclasses.replace(recipe.sampler, steps=settings["steps"])
    plan = lib.Plan(sampler, list(configs.values()), prompts, lib.sample_seeds(0, bs), bs, repeats=args.repeats, warmup=1)
    seconds = lib.time_configurations(base, plan, net)
    timing = lib.measure_c(base, net, plan.sampler, bs, repeats=2 * args.repeats) if net is not None else {}
    for path, run in zip(args.runs, runs):
        out = copy.deepcopy(run)
        ref = out["rows"][0]["label"]
        old = {r["steps"]: r["seconds_per_image"] for r in run["rows"] if r["method"] == "vanilla"}
        vanilla = {r["steps"]: seconds[r["label"]] for r in out["rows"] if r["method"] == "vanilla"}
        for r, was in zip(out["rows"], run["rows"]):
            r["seconds_per_image"] = round(seconds[r["label"]], 6)
            r["speedup"] = round(seconds[ref] / seconds[r["label"]], 4)
            if r["method"] == "vanilla":
                continue
            good = r.get("as_good_vanilla")
            v = min(good, key=vanilla.get) if good else int(r["front_vanilla"].split("-")[1])
            r["front_vanilla"], r["front_speedup"] = f"vanilla-{v}", round(vanilla[v] / seconds[r["label"]], 4)
            if was.get("ceiling") is not None:  # the vanilla the run found as good as vanilla-N
                at = was["ceiling"] * was["seconds_per_image"]
                c = min(old, key=lambda n: abs(old[n] - at))
                r["ceiling_vanilla"], r["ceiling"] = f"vanilla-{c}", round(vanilla[c] / seconds[r["label"]], 4)
            if r["method"] == "shortcut" and timing:
                r["bound"] = round(lib.bound(r["steps"], r["budget"], timing["c"]), 4)
        out["timing"] = {k: round(v, 6) for k, v in timing.items()}
        out["settings"]["retimed"] = {"repeats": args.repeats, "configurations": len(configs)}
        (path.parent / "retimed.json").write_text(json.dumps(out, indent=2) + "\n")
        print(f"{path.parent / 'retimed.json'}")
    print(json.dumps({label: round(s, 6) for label, s in seconds.items()}, indent=2))


if __name__ == "__main__":
    main()
