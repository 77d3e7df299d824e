"""Running a bench plan: each configuration's images, the timing runs, c, and `run_bench` that does it all.

    result = run_bench(base, plan, build_metrics(["prompt_accuracy", "fd"]), shortcut=net, state=state)
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Callable

import numpy as np
import torch

from migmcut import front
from migmcut.benchmark.plan import Configuration, Plan, with_knobs
from migmcut.benchmark.report import BenchResult, bench_result, per_sample_summary
from migmcut.benchmark.state import BenchState
from migmcut.errors import UserError
from migmcut.generation import per_sample_figures
from migmcut.methods import get_method
from migmcut.metrics import measure_resampled
from migmcut.methods.shortcut import BudgetPolicy
from migmcut.policies import FullPolicy
from migmcut.recipe import SamplerConfig
from migmcut.runner import Run, resolve_run
from migmcut.sampler import StepState


def run_for(base, plan: Plan, cfg: Configuration, shortcut) -> Run:
    """The configuration's run: its method at its full steps, or for an adaptive method at its cap
    (`shortcut` already on the base's device), with the entry's own knob values."""
    m = get_method(cfg.method)
    knobs = with_knobs(plan.knobs.get(cfg.method) or m.default_knobs(), cfg.knobs)
    return resolve_run(base, sampler_for(plan, cfg), cfg.method, full_steps=cfg.full_steps,
                       budget=cfg.budget if cfg.adaptive else None,
                       shortcut=shortcut if m.needs_shortcut else None, knobs=knobs)


def sampler_for(plan: Plan, cfg: Configuration) -> SamplerConfig:
    return dataclasses.replace(plan.sampler, steps=cfg.steps)


def generate_images(base, plan: Plan, cfg: Configuration, shortcut, on_batch=None) -> tuple[np.ndarray, dict, dict]:
    """The configuration's images, one batch's call counts (`SampleResult.counts`) and the per-sample
    figures (`report.per_sample_summary`)."""
    images, results = [], []
    for _, result in run_for(base, plan, cfg, shortcut).batches(plan.conditions, plan.seeds, plan.batch_size):
        images.append(base.decode(result.tokens))
        results.append(result)
        if on_batch:
            on_batch(len(result.tokens))
    forwards = [r.counts.get("full", 0) for r in results]
    return np.concatenate(images), results[-1].counts, per_sample_summary(per_sample_figures(results), forwards)


def time_configurations(base, plan: Plan, shortcut, on_run=None, done: dict[str, list[float]] | None = None,
                        on_time=None) -> dict[str, float]:
    """Seconds per image (median over repeats, after warm-up) of each configuration, on one batch.

    `done`: label -> seconds of the repeats already timed (by an interrupted run): only the missing
    ones run, after this process's own warm-up of the configurations still to time. `on_time(label,
    seconds)` gets each new timing as it is measured.
    """
    conds, seeds = plan.conditions[: plan.batch_size], plan.seeds[: plan.batch_size]
    times: dict[str, list[float]] = {c.label: list((done or {}).get(c.label, []))[: plan.repeats] for c in plan.configs}
    runs = {c.label: run_for(base, plan, c, shortcut) for c in plan.configs}
    for cfg in (c for c in plan.configs if len(times[c.label]) < plan.repeats):
        for _ in range(plan.warmup):
            runs[cfg.label].sample(conds, seeds)
            if on_run:
                on_run()
    for r in range(plan.repeats):
        for cfg in (c for c in plan.configs if len(times[c.label]) <= r):
            policy = runs[cfg.label].policy()
            t0 = time.perf_counter()
            runs[cfg.label].sample(conds, seeds, policy=policy)
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


def run_bench(base, plan: Plan, metrics: list, *, shortcut=None, reference: dict | None = None,
              progress: Callable[[str, int, int], None] | None = None, state: BenchState | None = None) -> BenchResult:
    """Sample and score every configuration, add vanilla step counts the front needs, then time all
    (the rows: `report.bench_result`).

    `reference`: {"images": ...} to take vanilla-N's images (e.g. from a store) instead of sampling.
    `state`: where each finished configuration and each timing is kept as it finishes, and taken
    from instead of recomputed (an interrupted run of the same plan).
    """
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
            images, counts, per_sample, source = reference["images"], {"full": cfg.steps}, {}, "store"
        else:
            made = [done]

            def advance(k):
                made[0] += k
                step(f"sampling {cfg.label}", made[0], n * len(configs))

            images, counts, per_sample = generate_images(base, plan, cfg, shortcut, on_batch=advance)
            source = "sampled"
        quality, resamplers = measure_resampled(metrics, images, plan.conditions)
        point = {m: quality[m] for m in higher if quality.get(m) is not None}
        sampled[cfg.label] = {"quality": quality, "scores": front.scores(point, resamplers, indices),
                              "counts": counts, "per_sample": per_sample, "source": source}
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
    return bench_result(plan, configs, sampled, seconds, timing, metrics, bootstrapped=indices is not None)
