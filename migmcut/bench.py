"""`migmcut bench` as a library: every configuration on the same prompts and seeds, timed and scored.

    plan = Plan(recipe.sampler, configurations(16, [4, 6], ["cache", "shortcut"]), prompts, seeds, 16)
    result = run_bench(base, plan, build_metrics(["prompt_accuracy", "fd"]), shortcut=net)
    write_outputs(out_dir, result)           # bench.json, bench.csv, pareto.png

Configurations: vanilla at N steps (the reference) and at the other step counts of the front
(default: every budget B, then refined: see `migmcut.front`), then each accelerated method at
(N, B): the cache, recap and mlcache with their own placements, the shortcut and the hybrid with
the searched schedule where one is saved (`auto`, as generate does), the uniform one, or both. Quality: every configuration generates all the samples (same conditions, same
per-sample seeds) and the metrics score them, with paired bootstrap intervals. Timing: seconds
per image of the sampler (decoding excluded, it is the same for every configuration), on one
batch of the bench batch size, after `warmup` untimed runs, median over `repeats` runs; the
repeats go round-robin over all configurations at the end, so that a drift in machine load hits
them all alike. `speedup` is vanilla-N's seconds per image over the row's; `front_speedup` that of
the fastest vanilla run at least as good on every metric; `ceiling` the front_speedup the row
would have at vanilla-N's quality (a perfect shortcut at the same cost). Shortcut rows also carry
`bound` = N / (B + (N - B) c), with c one shortcut call over one base forward, measured at the
bench batch size (both CFG branches). Every accelerated row also has `base_call_equivalents`, its
seconds per image in vanilla-N steps, and `step_cost`, what each of its non-full steps cost in
those units (its measured c, sampler work included), both from the same timing runs.

Nothing is lost on an interrupt: each sampled configuration and each timing run is kept in
OUT/state/ as it finishes (`BenchState`), and the same bench again continues from there.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

import migmcut
from migmcut import front
from migmcut.errors import BATCH_MAX, COUNT_MAX, SEED_MAX, StoreError, UserError, arg, check_range
from migmcut.files import atomic_write
from migmcut.placement import check_writable, load_schedule, save_schedules
from migmcut.policies import (
    METHODS, NEEDS_SHORTCUT, PARTIAL, BudgetPolicy, FullPolicy, PolicyKnobs, build, full_steps_for,
)
from migmcut.recipe import SamplerConfig
from migmcut.sampler import sample, trajectory_seed

SCHEDULE_MODES = ("auto", "uniform", "searched", "both")  # auto: as generate (searched where saved)


@dataclass
class Configuration:
    method: str
    steps: int  # sampling steps of this run
    budget: int  # full base steps
    full_steps: list[int] | None = None  # the steps that run the base (accelerated methods)
    schedule: str | None = None  # uniform | searched (the shortcut's placements: cache, shortcut, hybrid)
    reference: bool = False  # vanilla at N: the speedup reference

    @property
    def label(self) -> str:
        if self.method == "vanilla":
            return f"vanilla-{self.steps}"
        tag = "" if self.schedule in (None, "uniform") else f" ({self.schedule})"
        return f"{self.method}-{self.steps}/{self.budget}{tag}"


def parse_int_list(text: str | list[int], name: str) -> list[int]:
    """Integers given as a list or comma-separated ("2,4,8") for parameter `name`."""
    try:
        values = [int(v) for v in (text.split(",") if isinstance(text, str) else text) if str(v).strip()]
    except ValueError:
        raise UserError(f"{arg(name, repr(text))}: expected comma-separated integers, e.g. 2,4,8") from None
    if not values:
        raise UserError(f"{arg(name)} is empty: give at least one value")
    return values


def parse_names(text: str | list[str]) -> list[str]:
    """Names given as a list or comma-separated ("cache,shortcut")."""
    return [m.strip() for m in (text.split(",") if isinstance(text, str) else text) if m.strip()]


def split_methods(methods: list[str], budgets: list[int]) -> dict[str, list[int]]:
    """Method entries -> {method: its budgets}: `name` takes `budgets`, `name:B1/B2` its own
    (e.g. shortcut:3/4/6); vanilla's are empty (its step counts are the front's)."""
    if not methods:
        raise UserError(f"{arg('methods')} is empty: choose from {', '.join(METHODS)}")
    out: dict[str, list[int]] = {}
    for entry in methods:
        name, sep, own = entry.partition(":")
        name = name.strip()
        if name not in METHODS:
            raise UserError(f"unknown method {name!r}: choose from {', '.join(METHODS)}")
        if sep and name == "vanilla":
            raise UserError(f"{arg('methods', entry)}: vanilla takes no budgets (its step counts: {arg('vanilla_steps')})")
        mine = [int(b) for b in own.split("/")] if sep and all(b.strip().isdigit() for b in own.split("/")) else None
        if sep and mine is None:
            raise UserError(f"{arg('methods', repr(entry))}: expected NAME or NAME:B1/B2, e.g. shortcut:3/4/6")
        out[name] = [] if name == "vanilla" else list(dict.fromkeys(mine if sep else budgets))
    return out


def check_plan(steps: int, budgets: list[int], methods: list[str], schedule: str,
               vanilla_steps: list[int] | None = None) -> dict[str, list[int]]:
    """Every plan argument checked; -> `split_methods(methods, budgets)`."""
    if steps < 1:
        raise UserError(f"{arg('steps')} must be >= 1, got {steps}")
    plan = split_methods(methods, budgets)
    for b in sorted({b for bs in plan.values() for b in bs} | set(budgets)):
        if not 1 <= b <= steps:
            raise UserError(f"budget {b} must be between 1 and the step count ({steps})")
    for v in vanilla_steps or ():
        if not 1 <= v <= steps:
            raise UserError(f"{arg('vanilla_steps', v)} must be between 1 and the step count ({steps})")
    if schedule not in SCHEDULE_MODES:
        raise UserError(f"{arg('schedule', repr(schedule))}: choose {', '.join(SCHEDULE_MODES[:-1])} or {SCHEDULE_MODES[-1]}")
    return plan


def configurations(steps: int, budgets: list[int], methods: list[str], schedule: str = "uniform",
                   searched: dict[int, list[int]] | None = None,
                   vanilla_steps: list[int] | None = None, rounding: str = "half-up",
                   knobs: PolicyKnobs | None = None) -> list[Configuration]:
    """The bench plan: vanilla-N first, then vanilla at the other front step counts (default: every
    budget), then per budget each accelerated method of `methods` at (N, B), in METHODS' order
    (an entry `name:B1/B2` runs that method at its own budgets instead of `budgets`).

    Vanilla runs whatever `methods` says: it is what every accelerated row is judged against.
    The shortcut and the hybrid take the `schedule` mode: auto the searched placement where
    `searched` has one for B (as generate does), the uniform one otherwise, which follows the
    sampler's `budget_rounding` as generate's does. The cache is uniform; recap and mlcache place
    their full steps by their own rules (`policies.full_steps_for`, with `knobs`).
    """
    plan = check_plan(steps, budgets, methods, schedule, vanilla_steps)
    every = sorted({b for bs in plan.values() for b in bs}) or sorted(set(budgets))
    out = [Configuration("vanilla", steps, steps, reference=True)]
    out += [Configuration("vanilla", n, n) for n in sorted(set(vanilla_steps or every) - {steps})]
    for B in every:
        for method in (m for m in METHODS[1:] if B in plan.get(m, ())):
            if method not in NEEDS_SHORTCUT:
                try:
                    full = full_steps_for(method, steps, B, knobs, rounding)
                except ValueError as err:
                    raise UserError(f"{arg('budgets', B)}: {err}") from None
                out.append(Configuration(method, steps, B, full, "uniform" if method == "cache" else None))
                continue
            found = (searched or {}).get(B)
            modes = {"both": ("uniform", "searched"), "auto": ("searched" if found else "uniform",)}.get(schedule, (schedule,))
            for mode in modes:
                if mode == "uniform":
                    out.append(Configuration(method, steps, B, full_steps_for(method, steps, B, rounding=rounding), "uniform"))
                elif found is None:
                    raise UserError(f"no searched schedule for N={steps}, B={B}: run migmcut bench --search-schedule")
                else:
                    out.append(Configuration(method, steps, B, list(found), "searched"))
    return out


# --------------------------------------------------------------------------------- prompts


def read_prompts_file(path: str | Path) -> list[str]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"{arg('prompts', path)}: no such file (give a text file with one prompt a line)")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{arg('prompts', path)}: unreadable ({err})") from None
    prompts = [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise UserError(f"{arg('prompts', path)} holds no prompt: write one prompt a line")
    return prompts


def default_prompts(recipe) -> list[str]:
    """The recipe's bench prompts (`bench.prompts`): a shipped held-out set, the recipe's, or a file."""
    source = recipe.bench.prompts
    if source in ("bench-set", "selection-set"):
        if recipe.base.kind != "tiny-shapes":
            raise UserError(f"bench.prompts {source} is tiny-shapes' held-out set: pass {arg('prompts', 'FILE')} for {recipe.name}")
        from migmcut.world import prompt_sets

        return prompt_sets.load(source.removesuffix("-set"))
    if source != "recipe":
        return read_prompts_file(source)
    prompts = list(recipe.generate.prompts)
    if not prompts:
        raise UserError(f"recipe {recipe.name} has no default prompts: pass {arg('prompts', 'FILE')} or {arg('classes', 'IDS')}")
    return prompts


def expand(conditions: list, num_samples: int | None) -> list:
    """Cycle the conditions to `num_samples` (default: one sample each)."""
    if num_samples is None:
        return list(conditions)
    return [conditions[i % len(conditions)] for i in range(num_samples)]


# ---------------------------------------------------------------------------------- running


@dataclass
class Plan:
    sampler: SamplerConfig  # the recipe's sampler with steps = N
    configs: list[Configuration]
    conditions: list
    seeds: list[int]
    batch_size: int
    repeats: int = 3
    warmup: int = 1
    bootstrap: int = 1000  # paired resamples for the intervals (0: none)
    refine: bool = True  # add vanilla step counts until each row's front vanilla is pinned
    level: float = 0.95
    knobs: PolicyKnobs = field(default_factory=PolicyKnobs)  # the recipe's recap / mlcache / hybrid


def _policy(base, plan: Plan, cfg: Configuration, shortcut):
    counts = _sampler(plan, cfg).check(base.num_tokens) if cfg.method == "recap" else None
    return build(cfg.method, cfg.full_steps or list(range(cfg.steps)), shortcut=shortcut, counts=counts,
                 knobs=plan.knobs)


def _sampler(plan: Plan, cfg: Configuration) -> SamplerConfig:
    return dataclasses.replace(plan.sampler, steps=cfg.steps)


def generate_images(base, plan: Plan, cfg: Configuration, shortcut, on_batch=None) -> tuple[np.ndarray, dict]:
    images, counts = [], {}
    for lo in range(0, len(plan.conditions), plan.batch_size):
        conds, seeds = plan.conditions[lo : lo + plan.batch_size], plan.seeds[lo : lo + plan.batch_size]
        result = sample(base, conds, seeds, _sampler(plan, cfg), policy=_policy(base, plan, cfg, shortcut))
        images.append(base.decode(result.tokens))
        counts = result.counts
        if on_batch:
            on_batch(len(conds))
    return np.concatenate(images), counts


def time_configurations(base, plan: Plan, shortcut, on_run=None, done: dict[str, list[float]] | None = None,
                        on_time=None) -> dict[str, float]:
    """Seconds per image (median over repeats, after warm-up) of each configuration, on one batch.

    `done`: label -> seconds of the repeats already timed (by an interrupted run): only the missing
    ones run, after this process's own warm-up of the configurations still to time. `on_time(label,
    seconds)` gets each new timing as it is measured.
    """
    conds, seeds = plan.conditions[: plan.batch_size], plan.seeds[: plan.batch_size]
    times: dict[str, list[float]] = {c.label: list((done or {}).get(c.label, []))[: plan.repeats] for c in plan.configs}
    for cfg in (c for c in plan.configs if len(times[c.label]) < plan.repeats):
        for _ in range(plan.warmup):
            sample(base, conds, seeds, _sampler(plan, cfg), policy=_policy(base, plan, cfg, shortcut))
            if on_run:
                on_run()
    for r in range(plan.repeats):
        for cfg in (c for c in plan.configs if len(times[c.label]) <= r):
            policy, scfg = _policy(base, plan, cfg, shortcut), _sampler(plan, cfg)
            t0 = time.perf_counter()
            sample(base, conds, seeds, scfg, policy=policy)
            times[cfg.label].append(time.perf_counter() - t0)
            if on_time:
                on_time(cfg.label, times[cfg.label][-1])
            if on_run:
                on_run()
    return {label: statistics.median(ts) / len(conds) for label, ts in times.items()}


def timing_runs(plan: Plan, done: dict[str, list[float]] | None = None) -> int:
    """How many sampler runs `time_configurations` has left to do (warm-ups included)."""
    left = [plan.repeats - min(len((done or {}).get(c.label, [])), plan.repeats) for c in plan.configs]
    return sum(n + plan.warmup for n in left if n)


@torch.no_grad()
def measure_c(base, shortcut, sampler: SamplerConfig, batch_size: int, repeats: int = 5) -> dict:
    """Seconds of one base forward and of one shortcut call on a batch of the bench size (CFG both)."""
    L, branches = base.num_tokens, sampler.branches
    g = torch.Generator().manual_seed(0)
    B = batch_size
    tokens = torch.randint(0, base.codebook_size, (B, L), generator=g).to(base.device)
    masked = torch.zeros(B, L, dtype=torch.bool)
    masked[:, L // 2 :] = True
    tokens = torch.where(masked.to(base.device), base.mask_id, tokens)
    new = torch.zeros(B, L, dtype=torch.bool)
    k = max(1, L // max(sampler.steps, 1))
    new[:, L // 2 - k : L // 2] = True
    prompts = ["a large red circle"] * B  # a valid condition for text bases; class bases take 0
    try:
        cond = base.encode_conditions(prompts)
    except UserError:
        cond = base.encode_conditions([0] * B)
    if branches == 2:
        cond = cond.cat(base.null_conditions(B))
    from migmcut.sampler import StepState

    state = StepState(1, tokens, cond, new.to(base.device), 0.5)
    full = FullPolicy()
    policy = BudgetPolicy([0], shortcut)

    def timed(fn):
        fn()
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            if base.device.type == "cuda":
                torch.cuda.synchronize()
            ts.append(time.perf_counter() - t0)
        return statistics.median(ts)

    policy.step(base, StepState(0, tokens, cond, None, 0.5))  # its full step: the features it predicts from
    base_s = timed(lambda: full.step(base, state))
    short_s = timed(lambda: policy.predict(base, state, branches))
    return {"c": short_s / base_s, "base_forward_s": base_s, "shortcut_s": short_s}


def bound(steps: int, budget: int, c: float) -> float:
    return steps / (budget + (steps - budget) * c)


@dataclass
class BenchResult:
    rows: list[dict]
    primary: str | None
    higher_is_better: bool = True
    timing: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    higher: dict = field(default_factory=dict)  # every compared metric -> higher is better

    def to_dict(self) -> dict:
        return {"rows": self.rows, "primary": self.primary, "higher_is_better": self.higher_is_better,
                "higher": self.higher, "timing": self.timing, "settings": self.settings}


def _round(x, n=6):
    return None if x is None else round(float(x), n)


def run_bench(base, plan: Plan, metrics: list, *, shortcut=None, reference: dict | None = None,
              progress: Callable[[str, int, int], None] | None = None, state: BenchState | None = None) -> BenchResult:
    """Sample and score every configuration, add vanilla step counts the front needs, then time all.

    `reference`: {"images": ...} to take vanilla-N's images (e.g. from a store) instead of sampling.
    `state`: where each finished configuration and each timing is kept as it finishes, and taken
    from instead of recomputed (an interrupted run of the same plan).
    """
    from migmcut.metrics import measure_resampled

    step = progress or (lambda *a: None)
    higher = {m.primary: m.higher_is_better for m in metrics}
    n = len(plan.conditions)
    indices = front.bootstrap_indices(n, plan.bootstrap) if plan.bootstrap and n > 1 else None
    configs = list(plan.configs)
    sampled: dict[str, dict] = {}

    def score(cfg: Configuration) -> None:
        done = n * len(sampled)
        kept = state.sampled(cfg.label) if state is not None else None
        if kept is not None:
            sampled[cfg.label] = kept
            step(f"sampling {cfg.label} (kept)", done + n, n * len(configs))
            return
        step(f"sampling {cfg.label}", done, n * len(configs))
        if cfg.reference and reference is not None:
            images, counts, source = reference["images"], {"full": cfg.steps}, "store"
        else:
            made = [done]

            def advance(k):
                made[0] += k
                step(f"sampling {cfg.label}", made[0], n * len(configs))

            images, counts = generate_images(base, plan, cfg, shortcut, on_batch=advance)
            source = "sampled"
        quality, resamplers = measure_resampled(metrics, images, plan.conditions)
        point = {m: quality[m] for m in higher if quality.get(m) is not None}
        sampled[cfg.label] = {"quality": quality, "scores": front.scores(point, resamplers, indices),
                              "counts": counts, "source": source}
        if state is not None:
            state.save_sampled(cfg.label, sampled[cfg.label])

    for cfg in configs:
        score(cfg)
    accelerated = [c for c in configs if c.method != "vanilla"]

    def vanilla_scores() -> dict[int, front.Scores]:
        return {c.steps: sampled[c.label]["scores"] for c in configs if c.method == "vanilla"}

    while plan.refine and accelerated:
        rows = [sampled[c.label]["scores"] for c in accelerated]
        rows.append(sampled[configs[0].label]["scores"])  # also pin the vanilla that matches vanilla-N
        new = front.steps_to_refine(rows, vanilla_scores(), higher, plan.level)
        if not new:
            break
        for steps in sorted(new):
            configs.append(Configuration("vanilla", steps, steps))
            score(configs[-1])
        others = sorted((c for c in configs if c.method == "vanilla" and not c.reference), key=lambda c: c.steps)
        configs = [configs[0], *others, *accelerated]

    timed = dataclasses.replace(plan, configs=configs)
    kept = state.timings() if state is not None else {}
    runs = timing_runs(timed, kept)
    done = 0

    def tick():
        nonlocal done
        done += 1
        step("timing", done, runs)

    seconds = time_configurations(base, timed, shortcut, on_run=tick, done=kept,
                                  on_time=state.save_timing if state is not None else None)
    timing = {}
    if shortcut is not None and any(c.method == "shortcut" for c in configs):
        timing = state.c() if state is not None else None
        if not timing:
            timing = measure_c(base, shortcut, plan.sampler, min(plan.batch_size, n), repeats=max(3, 2 * plan.repeats))
            if state is not None:
                state.save_c(timing)
    vanilla = vanilla_scores()
    cost = {c.steps: seconds[c.label] for c in configs if c.method == "vanilla"}
    ref = configs[0]
    ref_s = seconds[ref.label]
    # what a perfect shortcut would reach: vanilla-N's quality at the row's cost
    ceiling_of = front.front_vanilla(sampled[ref.label]["scores"], vanilla, cost, higher, plan.level)
    rows = []
    for cfg in configs:
        got = sampled[cfg.label]
        sc: front.Scores = got["scores"]
        s = seconds[cfg.label]
        calls = got["counts"].get("full", 0)
        row = {
            "method": cfg.method,
            "steps": cfg.steps,
            "budget": cfg.budget,
            "base_calls": calls,
            "shortcut_calls": got["counts"].get("shortcut", 0),
            "partial_calls": sum(got["counts"].get(k, 0) for k in PARTIAL),
            "schedule": cfg.schedule,
            "full_steps": cfg.full_steps,
            "label": cfg.label,
            "seconds_per_image": _round(s),
            "speedup": 1.0 if cfg.reference else _round(ref_s / s, 4),
            "quality": {k: _round(v) for k, v in got["quality"].items()},
            "interval": {m: [_round(v) for v in iv] for m in higher if (iv := sc.interval(m, plan.level))},
            "matches_reference": front.at_least_as_good(sc, sampled[ref.label]["scores"], higher, plan.level),
            "images": got["source"],
        }
        if cfg.method != "vanilla":
            # the row's cost in vanilla-N steps, and what each of its other steps cost (measured, in one run)
            equivalents = s / (ref_s / ref.steps)
            row["base_call_equivalents"] = _round(equivalents, 3)
            row["step_cost"] = _round((equivalents - calls) / (cfg.steps - calls), 4) if cfg.steps > calls else None
            row["as_good_vanilla"] = good = front.as_good(sc, vanilla, higher, plan.level)
            v = front.cheapest(good, cost)
            # a row better than every vanilla run is judged against the most steps run (a lower bound)
            row["front_vanilla"] = f"vanilla-{v if v is not None else max(vanilla)}"
            row["front_speedup"] = _round(cost[v if v is not None else max(vanilla)] / s, 4)
            row["front_beyond"] = v is None
            if ceiling_of is not None:
                row["ceiling_vanilla"], row["ceiling"] = f"vanilla-{ceiling_of}", _round(cost[ceiling_of] / s, 4)
        if cfg.method == "shortcut" and timing:
            row["bound"] = _round(bound(cfg.steps, cfg.budget, timing["c"]), 4)
        rows.append(row)
    primary = metrics[0].primary if metrics else None
    higher_is_better = metrics[0].higher_is_better if metrics else True
    settings = {"num_samples": n, "batch_size": plan.batch_size, "repeats": plan.repeats, "warmup": plan.warmup,
                "steps": plan.sampler.steps, "bootstrap": plan.bootstrap if indices is not None else 0,
                "level": plan.level, "vanilla_steps": sorted(vanilla)}
    return BenchResult(rows, primary, higher_is_better, {k: _round(v) for k, v in timing.items()}, settings, higher)


# ------------------------------------------------------------------------- kept as it finishes

STATE_DIR = "state"  # OUT/state: what a bench run has finished, for a re-run to continue from
RESULT_FILES = ("bench.json", "bench.csv", "pareto.png", "rollout.json", "rollout.png")


def _plain(x):
    """`x` with numpy scalars and arrays as Python numbers and lists (exact: JSON keeps every float64)."""
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    return x


class BenchState:
    """What a bench run has finished, kept in OUT/state/ as it finishes, each file written atomically:
    `plan.json` (everything the figures depend on), one JSON file per sampled configuration (its
    figures, bootstrap draws and call counts) and `timing.json` (every timed repeat, and c).

    A run of the same plan into the same OUT takes what is there and computes only the rest, so a
    kill at any point loses at most the configuration (or the timing run) in flight. Another plan
    in that OUT is refused unless `overwrite`.
    """

    def __init__(self, out: Path, plan: dict):
        self.out, self.dir = Path(out), Path(out) / STATE_DIR
        self.plan = json.loads(json.dumps(_plain(plan)))  # as it reads back from plan.json
        self._timing: dict | None = None

    @staticmethod
    def _slug(label: str) -> str:
        import re

        return re.sub(r"[^A-Za-z0-9]+", "-", label).strip("-")

    def mode(self, overwrite: bool) -> str:
        """new | continue | replace; a UserError for another bench's results without `overwrite`. Reads only."""
        saved = self.dir / "plan.json"
        found = [n for n in RESULT_FILES if (self.out / n).exists()]
        if not saved.is_file():  # kept files without the plan they belong to (plan.json is written first)
            found += [f"{STATE_DIR}/{p.name}" for p in sorted(self.dir.glob("*.json"))]
        if overwrite:
            return "replace" if found or self.dir.exists() else "new"
        if saved.is_file():
            try:
                old = json.loads(saved.read_text())
            except (OSError, ValueError):
                old = None
            if old == self.plan:
                return "continue"
            differs = (", ".join(k for k in sorted(set(old) | set(self.plan)) if old.get(k) != self.plan.get(k))
                       if isinstance(old, dict) else "its plan.json is unreadable")
            raise UserError(f"{arg('out', self.out)} holds a bench of another plan (it differs in {differs}): run "
                            f"that command again to continue it, pass {arg('overwrite', True)} to replace it, or "
                            f"choose another {arg('out')}")
        if found:
            raise UserError(f"{arg('out', self.out)} holds bench results ({', '.join(found)}) with no plan to "
                            f"continue: pass {arg('overwrite', True)} to replace them, or choose another {arg('out')}")
        return "new"

    def start(self, mode: str) -> None:
        """Clear what `replace` replaces (bench's own files only), then record the plan."""
        if mode == "replace":
            for name in RESULT_FILES:
                (self.out / name).unlink(missing_ok=True)
            if self.dir.is_dir():
                for path in self.dir.glob("*.json"):
                    path.unlink()
        if mode != "continue":
            self.dir.mkdir(exist_ok=True)
            _atomic(self.dir / "plan.json", (json.dumps(self.plan, indent=1) + "\n").encode())

    def kept(self) -> int:
        """How many sampled configurations are kept."""
        return sum(1 for p in self.dir.glob("*.json") if p.name not in ("plan.json", "timing.json"))

    def sampled(self, label: str) -> dict | None:
        """A configuration's saved figures, as `run_bench` keeps them; None if not there (or unreadable)."""
        try:
            got = json.loads((self.dir / f"{self._slug(label)}.json").read_text())
            if got["label"] != label:
                return None
            draws = {m: np.asarray(d, dtype=np.float64) for m, d in got["draws"].items()}
            return {"quality": got["quality"], "scores": front.Scores(got["point"], draws), "counts": got["counts"],
                    "source": got["source"]}
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def save_sampled(self, label: str, entry: dict) -> None:
        sc = entry["scores"]
        data = {"label": label, "quality": entry["quality"], "point": sc.point, "draws": sc.draws,
                "counts": entry["counts"], "source": entry["source"]}
        _atomic(self.dir / f"{self._slug(label)}.json", json.dumps(_plain(data)).encode())

    def _load_timing(self) -> dict:
        if self._timing is None:
            try:
                self._timing = json.loads((self.dir / "timing.json").read_text())
            except (OSError, ValueError):
                self._timing = {}
            self._timing = {"repeats": dict(self._timing.get("repeats", {})), "c": self._timing.get("c")}
        return self._timing

    def timings(self) -> dict[str, list[float]]:
        return {k: list(v) for k, v in self._load_timing()["repeats"].items()}

    def save_timing(self, label: str, seconds: float) -> None:
        t = self._load_timing()
        t["repeats"].setdefault(label, []).append(float(seconds))
        _atomic(self.dir / "timing.json", json.dumps(t).encode())

    def c(self) -> dict | None:
        return self._load_timing()["c"]

    def save_c(self, timing: dict) -> None:
        t = self._load_timing()
        t["c"] = _plain(timing)
        _atomic(self.dir / "timing.json", json.dumps(t).encode())


# ---------------------------------------------------------------------------------- outputs


def pareto_front(xs: list[float], ys: list[float], higher_is_better: bool = True) -> list[int]:
    """Indices of the points no other point beats on both axes (x lower is better), by increasing x."""
    sign = 1.0 if higher_is_better else -1.0
    pts = [(x, sign * y, i) for i, (x, y) in enumerate(zip(xs, ys)) if x is not None and y is not None]
    pts.sort(key=lambda p: (p[0], -p[1]))
    front_idx, best = [], -np.inf
    for x, y, i in pts:
        if y > best:
            front_idx.append(i)
            best = y
    return front_idx


def _atomic(path: Path, data: bytes) -> None:
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


CSV_COLUMNS = ["label", "method", "schedule", "steps", "budget", "base_calls", "shortcut_calls", "partial_calls",
               "base_call_equivalents", "step_cost", "seconds_per_image", "speedup", "front_vanilla", "front_speedup", "ceiling", "bound"]


def csv_text(rows: list[dict]) -> str:
    metrics = list(dict.fromkeys(k for r in rows for k in r["quality"]))
    compared = list(dict.fromkeys(k for r in rows for k in r.get("interval", {})))
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(CSV_COLUMNS + metrics + [f"{m}_{end}" for m in compared for end in ("lo", "hi")])
    blank = lambda v: "" if v is None else v  # noqa: E731
    for r in rows:
        iv = r.get("interval", {})
        w.writerow([blank(r.get(c)) for c in CSV_COLUMNS] + [blank(r["quality"].get(m)) for m in metrics]
                   + [blank(iv[m][j]) if m in iv else "" for m in compared for j in (0, 1)])
    return buf.getvalue()


COLORS = {"vanilla": "tab:blue", "cache": "tab:orange", "shortcut": "tab:green", "recap": "tab:purple",
          "mlcache": "tab:brown", "hybrid": "tab:red"}


def place_labels(ax, points: list[tuple[float, float, str]], fontsize: int = 7) -> list:
    """Annotate each point with its label at the nearest of rings of offsets whose box overlaps no
    label or marker placed before it and stays inside the axes (a leader line joins far labels).
    Returns the annotations."""
    import math

    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    axes_box = ax.get_window_extent(renderer)
    to_px = ax.transData.transform
    from matplotlib.transforms import Bbox

    markers = [Bbox.from_extents(px - 4, py - 4, px + 4, py + 4)  # the markers themselves, a few pixels each way
               for px, py in (to_px((x, y)) for x, y, _ in points)]
    offsets = [(r * math.cos(a), r * math.sin(a)) for r in (6, 14, 24, 36, 50, 66, 84, 104, 126)
               for a in (math.pi * k / 8 for k in range(16))]
    placed, out = [], []
    for x, y, text in sorted(points, key=lambda p: p[0]):
        best = None
        for dx, dy in offsets:
            ann = ax.annotate(text, (x, y), textcoords="offset points", xytext=(dx, dy), fontsize=fontsize,
                              ha="left" if dx >= 0 else "right", va="bottom" if dy >= 0 else "top",
                              arrowprops={"arrowstyle": "-", "lw": 0.4, "color": "gray"} if math.hypot(dx, dy) > 10 else None)
            box = label_box(ann, renderer)
            inside = axes_box.x0 <= box.x0 and box.x1 <= axes_box.x1 and axes_box.y0 <= box.y0 and box.y1 <= axes_box.y1
            clashes = sum(box.overlaps(p) for p in placed + markers) + (0 if inside else 100)
            if best is None or clashes < best[0]:
                if best is not None:
                    best[1].remove()
                best = (clashes, ann, box)
            else:
                ann.remove()
            if clashes == 0:
                break
        placed.append(best[2])
        out.append(best[1])
    return out


def label_box(ann, renderer):
    """The text's own box, without its leader line (which may cross other labels)."""
    from matplotlib.text import Text

    ann.update_positions(renderer)  # places the text at its offset (Annotation's own extent does this first)
    return Text.get_window_extent(ann, renderer)


def pareto_figure(result: BenchResult):
    """One panel per compared metric: quality (with its interval) against seconds per image, the
    vanilla front as a line, every point labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result.rows
    metrics = list(result.higher) or ([result.primary] if result.primary else [])
    fig, axes = plt.subplots(1, max(1, len(metrics)), figsize=(7.5 * max(1, len(metrics)), 5.5), dpi=110,
                             squeeze=False)
    panels = []
    for ax, metric in zip(axes[0], metrics or [None]):
        up = result.higher.get(metric, result.higher_is_better)
        pts = []
        for r in rows:
            y = r["quality"].get(metric) if metric else None
            if y is None or r["seconds_per_image"] is None:
                continue
            x = r["seconds_per_image"]
            iv = r.get("interval", {}).get(metric)
            yerr = [[max(y - iv[0], 0)], [max(iv[1] - y, 0)]] if iv else None
            ax.errorbar([x], [y], yerr=yerr, fmt="s" if r.get("schedule") == "searched" else "o",
                        color=COLORS.get(r["method"], "gray"), ms=5, capsize=3, lw=1)
            pts.append((x, y, r["label"]))
        van = [r for r in rows if r["method"] == "vanilla" and r["quality"].get(metric) is not None]
        van = [van[i] for i in pareto_front([r["seconds_per_image"] for r in van], [r["quality"][metric] for r in van], up)]
        if van:
            ax.plot([r["seconds_per_image"] for r in van], [r["quality"][metric] for r in van], "--",
                    color=COLORS["vanilla"], lw=1, label="vanilla front")
            ax.legend(loc="lower right" if up else "upper right", fontsize=8)
        ax.set_xlabel("seconds per image (sampler)")
        ax.set_ylabel(f"{metric or 'quality'} ({'higher' if up else 'lower'} is better)")
        ax.set_title(f"speed / {metric or 'quality'} (bars: {int(result.settings.get('level', 0.95) * 100)}% paired bootstrap)",
                     fontsize=9)
        ax.grid(alpha=0.3)
        ax.margins(x=0.15, y=0.15)
        panels.append((ax, pts))
    fig.tight_layout()
    return fig, [ann for ax, pts in panels for ann in place_labels(ax, pts)]


def pareto_png(result: BenchResult) -> bytes:
    import matplotlib.pyplot as plt

    fig, _ = pareto_figure(result)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def write_outputs(out: Path, result: BenchResult) -> dict:
    out = Path(out)
    files = {"json": out / "bench.json", "csv": out / "bench.csv", "pareto": out / "pareto.png"}
    blobs = {
        "json": (json.dumps(result.to_dict(), indent=2) + "\n").encode(),
        "csv": csv_text(result.rows).encode(),
        "pareto": pareto_png(result),
    }
    for key, path in files.items():
        _atomic(path, blobs[key])
    return {k: str(v) for k, v in files.items()}


def rollout_png(errors: dict) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 4, figsize=(16, 6.5), dpi=100)
    titles = {"mse": "MSE", "cos": "cosine", "top1": "top-1 agreement (guided)", "kl": "KL (guided)"}
    for j, m in enumerate(titles):
        for name, err in errors.items():
            one = err.one_step(m)
            axes[0, j].plot(range(len(one)), one, marker="o", label=name)
            byk = err.by_k(m)
            axes[1, j].plot(range(1, len(byk) + 1), byk, marker="o", label=name)
        axes[0, j].set_title(f"one-step {titles[m]}")
        axes[0, j].set_xlabel("step t (predicting t+1)")
        axes[1, j].set_title(f"k-step rollout {titles[m]}")
        axes[1, j].set_xlabel("k (shortcut steps since the full step)")
        for ax in axes[:, j]:
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
            if m in ("mse", "kl"):
                ax.set_yscale("log")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def write_rollout(out: Path, errors: dict, meta: dict) -> dict:
    out = Path(out)
    payload = {**meta, **{name: err.to_dict() for name, err in errors.items()}}
    files = {"json": out / "rollout.json", "png": out / "rollout.png"}
    blobs = {"json": (json.dumps(payload, indent=2) + "\n").encode(), "png": rollout_png(errors)}
    for key, path in files.items():
        _atomic(path, blobs[key])
    return {f"rollout_{k}": str(v) for k, v in files.items()}


def metric_settings(recipe, device):
    """Where the recipe's bench section keeps the metrics' weights (local paths), for `device`."""
    from migmcut.metrics import MetricSettings

    cfg = recipe.bench
    return MetricSettings(fid_inception=cfg.fid_inception, fid_reference=cfg.fid_reference,
                          clip_model=cfg.clip_model, device=str(device))


def sample_seeds(run_seed: int, n: int) -> list[int]:
    return [trajectory_seed(run_seed, i) for i in range(n)]


# ------------------------------------------------------------------------------- the job


@dataclass
class BenchRun:
    result: BenchResult | None  # the rows (None when only searching schedules)
    files: dict = field(default_factory=dict)  # what was written: json, csv, pareto (rollout_json, rollout_png)
    rollout: dict | None = None  # {"shortcut": ..., "cache": ...} rollout errors on the store's validation trajectories
    schedules: list | None = None  # search_schedule: the searched placements (saved to files["schedules"])


def open_store(url: str, base, recipe, steps: int):
    """The trajectory store at `url`, checked against the recipe's base and sampler at `steps` steps."""
    from migmcut.store.reader import TrajectoryStore

    store = TrajectoryStore(url)
    store.check_base(base, recipe.name)
    if store.steps != steps:
        raise StoreError(f"{arg('store', url)} was recorded with {store.steps} steps, not {steps}: "
                         f"pass {arg('steps', store.steps)}")
    differs = store.sampler_difference(recipe.sampler)
    if differs:
        raise StoreError(f"{arg('store', url)} was recorded with other sampler settings ({differs}): use its recipe")
    if len(store.complete_indices()) == 0:
        raise StoreError(f"{arg('store', url)} has no complete trajectories: run migmcut record first")
    return store


def store_samples(store, indices, base, batch_size: int, device) -> tuple[list, list[int], dict]:
    """(conditions, seeds, {"images": decoded recorded tokens}) of trajectories `indices`: vanilla-N's reference."""
    arrays = store._arrays()
    conditions = [arrays[store.condition_kind][i] for i in indices]
    conditions = [c.item() if hasattr(c, "item") else c for c in conditions]
    seeds = [int(arrays["seeds"][i]) for i in indices]
    tokens = torch.from_numpy(np.stack([arrays["tokens"][i] for i in indices]).astype("int64")).to(device)
    images = np.concatenate([base.decode(tokens[lo : lo + batch_size]) for lo in range(0, len(indices), batch_size)])
    return conditions, seeds, {"images": images}


def bench(
    recipe,
    *,
    shortcut=None,
    steps: int | None = None,
    budgets: str | list[int] | None = None,
    methods: str | list[str] | None = None,
    vanilla_steps: str | list[int] | None = None,
    prompts: str | list[str] | None = None,
    classes: str | list[int] | None = None,
    num_samples: int | None = None,
    batch_size: int | None = None,
    repeats: int | None = None,
    schedule: str | None = None,
    metrics: str | list[str] | None = None,
    store: str | None = None,
    search_schedule: bool = False,
    out: str | Path = "bench",
    overwrite: bool = False,
    seed: int = 0,
    device=None,
    dtype="auto",
    base=None,
    progress: Callable[[str, int, int | None], None] | None = None,
    warn: Callable[[str], None] | None = None,
) -> BenchRun:
    """Bench vanilla and the accelerated methods on the same samples; write bench.json, bench.csv, pareto.png to `out`.

    Unset arguments take the recipe's `bench` section. Lists may be given comma-separated
    ("4,6"); `methods` entries may name their own budgets ("shortcut:3/4/6"). `prompts`: a list, a
    text file (one prompt a line) or bench-set / selection-set; `classes`: class ids instead.
    `shortcut`: a checkpoint directory (default: the recipe's). `store`: a trajectory store whose
    validation trajectories give the samples, vanilla-N's images (the recorded ones) and a rollout
    error report. `search_schedule`: only search the full-step placement per budget on the store
    and save it beside the shortcut (`schedules.json`); nothing is benched. `progress(what, done,
    total)` follows the work; `warn(line)` gets a line per metric skipped for missing weights.

    Each configuration is kept in `out`/state/ as it finishes (`BenchState`): the same call again
    after an interrupt continues, computing only what is missing; `out` holding a bench of another
    plan is refused unless `overwrite`. `out` is created only once every argument is checked.
    """
    from migmcut import schedule_search as ss
    from migmcut.base import load_base
    from migmcut.devices import placement
    from migmcut.files import check_writable_dir, dir_lock
    from migmcut.metrics import REGISTRY, build_metrics, default_metric_names
    from migmcut.recipe import as_recipe
    from migmcut.shortcut import load_shortcut, resolve_checkpoint

    rec = as_recipe(recipe)
    cfg = rec.bench
    N = steps if steps is not None else (cfg.steps or rec.sampler.steps)
    budget_list = parse_int_list(budgets, "budgets") if budgets is not None else list(cfg.budgets)
    method_list = parse_names(methods) if methods is not None else list(cfg.methods)
    mode = schedule or cfg.schedule
    front_steps = parse_int_list(vanilla_steps, "vanilla_steps") if vanilla_steps is not None else cfg.vanilla_steps
    method_budgets = check_plan(N, budget_list, method_list, mode, front_steps)
    bs = batch_size if batch_size is not None else (cfg.batch_size or rec.generate.batch_size)
    reps = repeats if repeats is not None else cfg.repeats
    for name, value, low, high in (("batch_size", bs, 1, BATCH_MAX), ("repeats", reps, 1, 1000),
                                   ("num_samples", num_samples, 1, COUNT_MAX), ("seed", seed, 0, SEED_MAX)):
        check_range(name, value, low, high)  # steps and budgets: check_plan above
    if prompts is not None and classes is not None:
        raise UserError(f"give {arg('prompts')} or {arg('classes')}, not both")
    if store is not None and (prompts is not None or classes is not None):
        raise UserError(f"{arg('store')} takes its prompts and seeds from the store: drop {arg('prompts')} / {arg('classes')}")
    if search_schedule and store is None:
        raise UserError(f"{arg('search_schedule', True)} needs {arg('store', 'STORE')} (validation trajectories to "
                        "measure rollout errors on)")
    checkpoint = shortcut if shortcut is not None else resolve_checkpoint(rec.shortcut.checkpoint)
    if search_schedule:
        check_writable(checkpoint)
    given = None
    if isinstance(prompts, str):
        given = default_prompts(dataclasses.replace(rec, bench=dataclasses.replace(cfg, prompts=prompts)))
    elif prompts is not None:
        given = list(prompts)
    elif classes is not None:
        given = parse_int_list(classes, "classes")
    metric_names = parse_names(metrics) if metrics is not None else list(cfg.metrics) or default_metric_names(rec.base.kind)
    for m in metric_names:
        if m not in REGISTRY:
            raise UserError(f"unknown metric {m!r}: choose from {', '.join(REGISTRY)}")
    out_dir = None if search_schedule else check_writable_dir(out)  # made once everything is checked

    dev, dt = placement(device, dtype, base)
    base = base if base is not None else load_base(rec.base, dev, dt)
    if N > base.num_tokens:
        raise UserError(f"{arg('steps', N)} exceeds the number of image tokens ({base.num_tokens})")
    need_shortcut = any(m in NEEDS_SHORTCUT for m in method_budgets) or search_schedule
    if any(m in PARTIAL for m in method_budgets):
        base.require_partial()
    net, meta = None, {}
    if checkpoint is not None and (need_shortcut or store is not None):
        net, meta = load_shortcut(checkpoint, base)
        net = net.to(device=dev, dtype=next(base.parameters()).dtype)
    elif need_shortcut:
        raise UserError(f"method {next(m for m in method_budgets if m in NEEDS_SHORTCUT)} needs a shortcut checkpoint: "
                        f"pass {arg('shortcut', 'DIR')} (made by migmcut train) or drop shortcut / hybrid from "
                        f"{arg('methods')}")

    opened = open_store(store, base, rec, N) if store is not None else None
    val_idx = None
    if opened is not None:
        tmeta = meta.get("train", {}) if meta.get("store") else {}
        _, val_idx = opened.split(tmeta.get("val_fraction", rec.train.val_fraction), seed=tmeta.get("seed", rec.train.seed))
        if len(val_idx) == 0:
            raise UserError(f"{arg('store', store)}: no validation trajectories (record more)")

    def search_now(budget_values):
        errors = ss.rollout_errors(opened, val_idx, base, net.float(), device=dev)
        found = ss.search(errors["shortcut"], budget_values)
        path = save_schedules(checkpoint, ss.table(found), {"store": str(store), "val_trajectories": int(len(val_idx)),
                                                       "objective": ss.OBJECTIVE_TEXT})
        net.to(dtype=next(base.parameters()).dtype)
        return found, path, errors

    if search_schedule:
        found, path, _ = search_now(budget_list)
        return BenchRun(None, {"schedules": str(path)}, schedules=found)

    searched: dict[int, list[int]] = {}
    errors = None
    if any(m in NEEDS_SHORTCUT for m in method_budgets) and mode in ("auto", "searched", "both"):
        missing = []
        for B in sorted({b for m in NEEDS_SHORTCUT for b in method_budgets.get(m, ())}):
            full = load_schedule(checkpoint, N, B)
            if full is None:
                missing.append(B)
            else:
                searched[B] = full
        if missing and mode != "auto":
            if opened is None:
                raise UserError(f"no searched schedule for N={N}, B={','.join(map(str, missing))} in {checkpoint}: "
                                f"run migmcut bench --search-schedule --store STORE (or pass {arg('store')})")
            found, _, errors = search_now(missing)
            searched.update({r.budget: r.full_steps for r in found})
    knobs = PolicyKnobs.of(rec)
    configs = configurations(N, budget_list, method_list, mode, searched, front_steps, rec.sampler.budget_rounding, knobs)

    reference = None
    if opened is not None:
        chosen = [int(i) for i in val_idx[: num_samples or len(val_idx)]]
        conditions, seeds, reference = store_samples(opened, chosen, base, bs, dev)
    else:
        n = num_samples if num_samples is not None else cfg.num_samples
        conditions = expand(given if given is not None else default_prompts(rec), n)
        seeds = sample_seeds(seed, len(conditions))
    for c in conditions:
        if isinstance(c, str) and not c.strip():
            raise UserError("empty prompt in the bench prompts: every line needs a caption")
    base.encode_conditions(conditions)  # every condition valid before any work
    metric_list = build_metrics(metric_names, metric_settings(rec, dev), warn=warn or warnings.warn)
    for metric in metric_list:
        metric.check(conditions)

    plan = Plan(sampler=rec.sampler, configs=configs, conditions=conditions, seeds=seeds, batch_size=bs,
                repeats=reps, warmup=cfg.warmup, bootstrap=cfg.bootstrap, refine=front_steps is None, knobs=knobs)
    identity = {  # everything the figures depend on: a re-run continues only the same plan
        "format": 1, "base": base.fingerprint, "sampler": dataclasses.asdict(_sampler(plan, configs[0])),
        "knobs": dataclasses.asdict(knobs), "shortcut": _file_digest(checkpoint) if net is not None else None,
        "configurations": [[c.label, c.full_steps] for c in configs], "refine": plan.refine,
        "conditions": conditions, "seeds": seeds, "batch_size": bs, "repeats": reps, "warmup": plan.warmup,
        "bootstrap": plan.bootstrap, "level": plan.level, "store": store,
        "metrics": {"names": [m.name for m in metric_list], "settings": dataclasses.asdict(metric_settings(rec, dev))},
        "device": str(dev), "dtype": str(dt),
    }
    state = BenchState(out_dir, identity)
    state.mode(overwrite)  # refused before anything is created
    busy = f"{arg('out', out_dir)}: another bench is writing there; wait for it or choose another {arg('out')}"
    with dir_lock(out_dir, busy):
        mode = state.mode(overwrite)  # again, now that no other bench can change it
        state.start(mode)
        if mode == "continue" and warn:
            warn(f"continuing the bench in {out_dir}: {state.kept()} finished configuration(s) kept, computing the "
                 f"rest (--overwrite starts again)")
        result = run_bench(base, plan, metric_list, shortcut=net, reference=reference, progress=progress, state=state)
        if opened is not None and errors is None:
            if progress:
                progress("rollout errors", 0, None)
            errors = ss.rollout_errors(opened, val_idx, base, None if net is None else net.float(), device=dev)
        result.settings.update({"recipe": rec.name, "seed": seed, "store": store,
                                "shortcut": str(checkpoint) if checkpoint else None,
                                "metrics": [m.name for m in metric_list], "device": str(dev),
                                "knobs": dataclasses.asdict(knobs)})
        files = write_outputs(out_dir, result)
        if errors is not None:
            files.update(write_rollout(out_dir, errors, {"store": store, "val_trajectories": int(len(val_idx)),
                                                         "steps": N}))
    return BenchRun(result, files, errors)


def _file_digest(checkpoint) -> str:
    """sha256 of a shortcut checkpoint's weights: the same directory retrained is another plan."""
    import hashlib

    return hashlib.sha256((Path(checkpoint).expanduser() / "shortcut.safetensors").read_bytes()).hexdigest()


sys.modules[__name__].__class__ = migmcut.CallableModule  # migmcut.bench(...) calls bench() above
