"""`migmcut bench` as a library: every configuration on the same prompts and seeds, timed and scored.

    result = run_bench(recipe, base, BenchSpec(steps=16, budgets=[4], ...), shortcut=net)
    write_outputs(out_dir, result)           # bench.json, bench.csv, pareto.png

Configurations: vanilla at N steps (the reference, always run), vanilla at each budget B (as
many base calls), the cache at (N, B) and the shortcut at (N, B) with the uniform and/or the
searched schedule. Timing: seconds per image of the sampler (decoding excluded, it is the same
for every configuration), on one batch of the bench batch size, after `warmup` untimed runs,
median over `repeats` runs; the repeats go round-robin over the configurations so that a drift
in machine load hits them all alike. Quality: every configuration generates all the samples
(same conditions, same per-sample seeds) and the metrics score them. `speedup` is vanilla-N's
seconds per image over the row's. Shortcut rows also carry `bound` = N / (B + (N - B) c), with c
one shortcut call over one base forward, measured at the bench batch size (both CFG branches).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from migmcut.errors import UserError
from migmcut.generate import METHODS
from migmcut.policies import BudgetPolicy, FullPolicy, budget_schedule
from migmcut.sampler import SamplerConfig, sample, trajectory_seed

SCHEDULE_MODES = ("uniform", "searched", "both")


@dataclass
class Configuration:
    method: str
    steps: int  # sampling steps of this run
    budget: int  # full base steps
    full_steps: list[int] | None = None  # for cache / shortcut
    schedule: str | None = None  # uniform | searched (cache / shortcut)
    reference: bool = False  # vanilla at N: the speedup reference

    @property
    def label(self) -> str:
        if self.method == "vanilla":
            return f"vanilla-{self.steps}"
        tag = "" if self.schedule in (None, "uniform") else f" ({self.schedule})"
        return f"{self.method}-{self.steps}/{self.budget}{tag}"


def parse_int_list(text: str, flag: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{flag} {text!r}: expected comma-separated integers, e.g. 2,4,8") from None
    if not values:
        raise UserError(f"{flag} is empty: give at least one value")
    return values


def check_plan(steps: int, budgets: list[int], methods: list[str], schedule: str) -> None:
    if steps < 1:
        raise UserError(f"--steps must be >= 1, got {steps}")
    for m in methods:
        if m not in METHODS:
            raise UserError(f"unknown method {m!r}: choose from {', '.join(METHODS)}")
    if not methods:
        raise UserError("--methods is empty: choose from vanilla, cache, shortcut")
    for b in budgets:
        if not 1 <= b <= steps:
            raise UserError(f"budget {b} must be between 1 and the step count ({steps})")
    if schedule not in SCHEDULE_MODES:
        raise UserError(f"--schedule {schedule!r}: choose uniform, searched or both")


def configurations(steps: int, budgets: list[int], methods: list[str], schedule: str = "uniform",
                   searched: dict[int, list[int]] | None = None) -> list[Configuration]:
    """The bench plan: vanilla-N first, then per budget vanilla-B, cache (N, B), shortcut (N, B)."""
    check_plan(steps, budgets, methods, schedule)
    out = [Configuration("vanilla", steps, steps, reference=True)]
    seen = {("vanilla", steps)}
    for B in dict.fromkeys(budgets):
        if "vanilla" in methods and ("vanilla", B) not in seen:
            out.append(Configuration("vanilla", B, B))
            seen.add(("vanilla", B))
        if "cache" in methods:
            out.append(Configuration("cache", steps, B, budget_schedule(steps, B), "uniform"))
        if "shortcut" in methods:
            if schedule in ("uniform", "both"):
                out.append(Configuration("shortcut", steps, B, budget_schedule(steps, B), "uniform"))
            if schedule in ("searched", "both"):
                full = (searched or {}).get(B)
                if full is None:
                    raise UserError(f"no searched schedule for N={steps}, B={B}: run migmcut bench --search-schedule")
                out.append(Configuration("shortcut", steps, B, list(full), "searched"))
    return out


# --------------------------------------------------------------------------------- prompts


def read_prompts_file(path: str | Path) -> list[str]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"--prompts {path}: no such file (give a text file with one prompt a line)")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"--prompts {path}: unreadable ({err})") from None
    prompts = [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise UserError(f"--prompts {path} holds no prompt: write one prompt a line")
    return prompts


def default_prompts(recipe, num: int, seed: int) -> list[str]:
    """The recipe's bench prompts: held-out world prompts for tiny-shapes (half one-, half two-shape)."""
    if recipe.bench.prompts == "heldout" and recipe.base.kind == "tiny-shapes":
        from migmcut.world.evaluate import heldout_prompts

        one = num // 2
        return heldout_prompts(one, 1, seed) + heldout_prompts(num - one, 2, seed)
    prompts = list(recipe.generate.prompts)
    if not prompts:
        raise UserError(f"recipe {recipe.name} has no default prompts: pass --prompts FILE or --classes IDS")
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


def _policy(cfg: Configuration, shortcut):
    if cfg.method == "vanilla":
        return FullPolicy()
    return BudgetPolicy(cfg.full_steps, shortcut if cfg.method == "shortcut" else None)


def _sampler(plan: Plan, cfg: Configuration) -> SamplerConfig:
    return dataclasses.replace(plan.sampler, steps=cfg.steps)


def generate_images(base, plan: Plan, cfg: Configuration, shortcut, on_batch=None) -> tuple[np.ndarray, dict]:
    images, counts = [], {}
    for lo in range(0, len(plan.conditions), plan.batch_size):
        conds, seeds = plan.conditions[lo : lo + plan.batch_size], plan.seeds[lo : lo + plan.batch_size]
        result = sample(base, conds, seeds, _sampler(plan, cfg), policy=_policy(cfg, shortcut))
        images.append(base.decode(result.tokens))
        counts = result.counts
        if on_batch:
            on_batch(len(conds))
    return np.concatenate(images), counts


def time_configurations(base, plan: Plan, shortcut, on_run=None) -> dict[str, float]:
    """Seconds per image (median over repeats, after warm-up) of each configuration, on one batch."""
    conds, seeds = plan.conditions[: plan.batch_size], plan.seeds[: plan.batch_size]
    for cfg in plan.configs:
        for _ in range(plan.warmup):
            sample(base, conds, seeds, _sampler(plan, cfg), policy=_policy(cfg, shortcut))
            if on_run:
                on_run()
    times: dict[str, list[float]] = {c.label: [] for c in plan.configs}
    for _ in range(plan.repeats):
        for cfg in plan.configs:
            policy, scfg = _policy(cfg, shortcut), _sampler(plan, cfg)
            t0 = time.perf_counter()
            sample(base, conds, seeds, scfg, policy=policy)
            times[cfg.label].append(time.perf_counter() - t0)
            if on_run:
                on_run()
    return {label: statistics.median(ts) / len(conds) for label, ts in times.items()}


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
        cond = torch.cat([cond, base.null_conditions(B)])
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

    _, feats = full.step(base, StepState(0, tokens, cond, None, 0.5))[1:]
    policy.features = feats
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

    def to_dict(self) -> dict:
        return {"rows": self.rows, "primary": self.primary, "higher_is_better": self.higher_is_better,
                "timing": self.timing, "settings": self.settings}


def _round(x, n=6):
    return None if x is None else round(float(x), n)


def run_bench(base, plan: Plan, metrics: list, *, shortcut=None, reference: dict | None = None,
              progress: Callable[[str, int, int], None] | None = None) -> BenchResult:
    """Run the plan. `reference`: {"images": ...} to take vanilla-N's images (e.g. from a store)."""
    from migmcut.metrics import measure

    step = progress or (lambda *a: None)
    runs = len(plan.configs) * (plan.warmup + plan.repeats)
    done = 0

    def tick():
        nonlocal done
        done += 1
        step("timing", done, runs)

    seconds = time_configurations(base, plan, shortcut, on_run=tick)
    timing = {}
    if shortcut is not None and any(c.method == "shortcut" for c in plan.configs):
        timing = measure_c(base, shortcut, plan.sampler, min(plan.batch_size, len(plan.conditions)),
                           repeats=max(3, 2 * plan.repeats))
    ref_s = seconds[plan.configs[0].label]
    rows = []
    for i, cfg in enumerate(plan.configs):
        step(f"sampling {cfg.label}", i, len(plan.configs))
        if cfg.reference and reference is not None:
            images, base_calls, shortcut_calls, source = reference["images"], cfg.steps, 0, "store"
        else:
            images, counts = generate_images(base, plan, cfg, shortcut)
            base_calls, shortcut_calls, source = counts.get("full", 0), counts.get("shortcut", 0), "sampled"
        row = {
            "method": cfg.method,
            "steps": cfg.steps,
            "budget": cfg.budget,
            "base_calls": base_calls,
            "shortcut_calls": shortcut_calls,
            "schedule": cfg.schedule,
            "full_steps": cfg.full_steps,
            "label": cfg.label,
            "seconds_per_image": _round(seconds[cfg.label]),
            "speedup": 1.0 if cfg.reference else _round(ref_s / seconds[cfg.label], 4),
            "quality": {k: _round(v) for k, v in measure(metrics, images, plan.conditions).items()},
            "images": source,
        }
        if cfg.method == "shortcut" and timing:
            row["bound"] = _round(bound(cfg.steps, cfg.budget, timing["c"]), 4)
        rows.append(row)
    primary = metrics[0].primary if metrics else None
    higher = metrics[0].higher_is_better if metrics else True
    settings = {"num_samples": len(plan.conditions), "batch_size": plan.batch_size, "repeats": plan.repeats,
                "warmup": plan.warmup, "steps": plan.sampler.steps}
    return BenchResult(rows, primary, higher, {k: _round(v) for k, v in timing.items()}, settings)


# ---------------------------------------------------------------------------------- outputs


def pareto_front(xs: list[float], ys: list[float], higher_is_better: bool = True) -> list[int]:
    """Indices of the points no other point beats on both axes (x lower is better), by increasing x."""
    sign = 1.0 if higher_is_better else -1.0
    pts = [(x, sign * y, i) for i, (x, y) in enumerate(zip(xs, ys)) if x is not None and y is not None]
    pts.sort(key=lambda p: (p[0], -p[1]))
    front, best = [], -np.inf
    for x, y, i in pts:
        if y > best:
            front.append(i)
            best = y
    return front


def _atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def csv_text(rows: list[dict]) -> str:
    metrics = list(dict.fromkeys(k for r in rows for k in r["quality"]))
    cols = ["label", "method", "schedule", "steps", "budget", "base_calls", "shortcut_calls",
            "seconds_per_image", "speedup", "bound"]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(cols + metrics)
    for r in rows:
        w.writerow([("" if r.get(c) is None else r.get(c)) for c in cols]
                   + [("" if r["quality"].get(m) is None else r["quality"][m]) for m in metrics])
    return buf.getvalue()


def pareto_png(result: BenchResult) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, metric = result.rows, result.primary
    fig, ax = plt.subplots(figsize=(7, 5), dpi=110)
    xs = [r["seconds_per_image"] for r in rows]
    ys = [r["quality"].get(metric) if metric else None for r in rows]
    colors = {"vanilla": "tab:blue", "cache": "tab:orange", "shortcut": "tab:green"}
    for r, x, y in zip(rows, xs, ys):
        if y is None:
            continue
        ax.scatter([x], [y], color=colors.get(r["method"], "gray"), marker="s" if r.get("schedule") == "searched" else "o")
        ax.annotate(r["label"], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    front = pareto_front(xs, ys, result.higher_is_better)
    if front:
        ax.plot([xs[i] for i in front], [ys[i] for i in front], "--", color="black", lw=1, label="Pareto front")
        ax.legend(loc="best")
    ax.set_xlabel("seconds per image (sampler)")
    ax.set_ylabel(f"{metric or 'quality'} ({'higher' if result.higher_is_better else 'lower'} is better)")
    ax.set_title("speed / quality")
    ax.grid(alpha=0.3)
    buf = io.BytesIO()
    fig.tight_layout()
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


def sample_seeds(run_seed: int, n: int) -> list[int]:
    return [trajectory_seed(run_seed, i) for i in range(n)]
