"""Time the configurations of finished bench runs again, side by side, without sampling anew.

    python benchmarks/retime.py runs/bench-s0/bench.json runs/bench-s1/bench.json --repeats 3

A bench run scores quality on all its samples and times every configuration at the end; when
something else loaded the machine during that timing phase, its seconds are not worth quoting,
while its quality still is. This times the union of the runs' configurations in one quiet
round-robin (`bench.time_configurations`, the bench's own protocol, on the recipe's first bench
batch), measures c again, and writes `retimed.json` beside each bench.json: the rows with the new
seconds, speedup, front_speedup (the fastest under the new timing of the row's `as_good_vanilla`;
for runs made before that list, of the run's own choice and every vanilla with fewer steps that
the run's noisy seconds may have passed over, so the figure can only err low), ceiling and bound,
and the timing itself to `timing.json` beside the first (`--seconds` reuses it). Speed depends on
the configuration, not on the seed, so one timing serves every run.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
from pathlib import Path

import torch

from migmcut import benchmark as lib
from migmcut.base import load_base
from migmcut.recipe import load_recipe
from migmcut.shortcut import load_shortcut


def configs_of(rows: list[dict]) -> list[lib.Configuration]:
    return [lib.Configuration(r["method"], r["steps"], r["budget"], r.get("full_steps"), r.get("schedule"),
                              reference=i == 0) for i, r in enumerate(rows)]


def retimed(run: dict, seconds: dict[str, float], timing: dict) -> dict:
    """`run` (a bench.json) with its speed figures recomputed from `seconds` (label -> s/image)."""
    out = copy.deepcopy(run)
    ref = out["rows"][0]["label"]
    old = {r["steps"]: r["seconds_per_image"] for r in run["rows"] if r["method"] == "vanilla"}
    vanilla = {r["steps"]: seconds[r["label"]] for r in out["rows"] if r["method"] == "vanilla"}
    for r, was in zip(out["rows"], run["rows"]):
        r["seconds_per_image"] = round(seconds[r["label"]], 6)
        r["speedup"] = round(seconds[ref] / seconds[r["label"]], 4)
        if r["method"] == "vanilla":
            continue
        equivalents = seconds[r["label"]] / (seconds[ref] / out["rows"][0]["steps"])
        r["base_call_equivalents"] = round(equivalents, 3)
        calls = r["base_calls"]
        r["step_cost"] = round((equivalents - calls) / (r["steps"] - calls), 4) if r["steps"] > calls else None
        good = r.get("as_good_vanilla")
        if not good:  # runs before that list: the run's choice, and every vanilla it may have passed
            chosen = int(r["front_vanilla"].split("-")[1])  # over because its noisy seconds were higher
            good = [chosen] + [n for n in old if n < chosen and old[n] >= old[chosen]]
            r["front_vanilla_conservative"] = len(good) > 1
        v = min(good, key=vanilla.get)
        r["front_vanilla"], r["front_speedup"] = f"vanilla-{v}", round(vanilla[v] / seconds[r["label"]], 4)
        if was.get("ceiling") is not None:  # the vanilla the run found as good as vanilla-N
            if "ceiling_vanilla" in was:
                c = int(was["ceiling_vanilla"].split("-")[1])
            else:  # runs before that field: the vanilla whose seconds the ceiling was computed from
                c = min(old, key=lambda n: abs(old[n] - was["ceiling"] * was["seconds_per_image"]))
            r["ceiling_vanilla"], r["ceiling"] = f"vanilla-{c}", round(vanilla[c] / seconds[r["label"]], 4)
        if r["method"] == "shortcut" and timing:
            r["bound"] = round(lib.bound(r["steps"], r["budget"], timing["c"]), 4)
    out["timing"] = {k: round(v, 6) for k, v in timing.items()}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="bench.json files of runs made with one recipe and shortcut")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seconds", type=Path, help="a timing this script saved (timing.json): recompute the rows only")
    args = p.parse_args()
    torch.set_grad_enabled(False)
    runs = [json.loads(path.read_text()) for path in args.runs]
    if args.seconds:
        saved = json.loads(args.seconds.read_text())
    else:
        saved = measure(runs, args.repeats)
        (args.runs[0].parent / "timing.json").write_text(json.dumps(saved, indent=2) + "\n")
    for path, run in zip(args.runs, runs):
        out = retimed(run, saved["seconds"], saved["timing"])
        out["settings"]["retimed"] = saved["settings"]
        (path.parent / "retimed.json").write_text(json.dumps(out, indent=2) + "\n")
        print(path.parent / "retimed.json")


def measure(runs: list[dict], repeats: int) -> dict:
    """Seconds per image of every configuration of `runs`, one round-robin, and c."""
    settings = runs[0]["settings"]
    recipe = load_recipe(settings["recipe"])
    base = load_base(recipe.base, "cpu", torch.float32)
    net = load_shortcut(settings["shortcut"], base)[0] if settings.get("shortcut") else None
    configs = {}
    for run in runs:
        for cfg in configs_of(run["rows"]):
            configs.setdefault(cfg.label, cfg)
    bs = settings["batch_size"]
    sampler = dataclasses.replace(recipe.sampler, steps=settings["steps"])
    plan = lib.Plan(sampler, list(configs.values()), lib.expand(lib.default_prompts(recipe), bs),
                    lib.sample_seeds(0, bs), bs, repeats=repeats, warmup=1, knobs={c.method: recipe.knobs_for(c.method) for c in configs.values()})
    seconds = lib.time_configurations(base, plan, net)
    timing = lib.measure_c(base, net, sampler, bs, repeats=2 * repeats) if net is not None else {}
    return {"seconds": seconds, "timing": timing,
            "settings": {"repeats": repeats, "configurations": len(configs), "threads": torch.get_num_threads()}}


if __name__ == "__main__":
    main()
