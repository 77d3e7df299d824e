"""`migmcut bench` as one call (`bench`): the recipe's settings, the arguments checked, the base,
shortcut and store opened, the plan run (continued where an interrupted run stopped) and written."""

from __future__ import annotations

import dataclasses
import hashlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from migmcut import schedule_search as ss
from migmcut.base import load_base
from migmcut.benchmark.plan import (
    Plan, check_plan, configurations, default_prompts, expand, int_list, metric_settings, name_list, sample_seeds,
)
from migmcut.benchmark.report import BenchResult, write_outputs, write_rollout
from migmcut.benchmark.run import run_bench, sampler_for
from migmcut.benchmark.search import search_and_save
from migmcut.benchmark.state import BenchState
from migmcut.benchmark.store import open_store, store_samples, validation_indices
from migmcut.devices import placement
from migmcut.errors import BATCH_MAX, COUNT_MAX, SEED_MAX, UserError, api, arg, check_range
from migmcut.files import check_writable_dir, dir_lock
from migmcut.methods import get_method
from migmcut.placement import load_schedule
from migmcut.metrics import REGISTRY, build_metrics, default_metric_names
from migmcut.recipe import as_recipe
from migmcut.shortcut import load_shortcut, resolve_checkpoint


@dataclass
class BenchRun:
    result: BenchResult  # the rows
    files: dict = field(default_factory=dict)  # what was written: json, csv, pareto (rollout_json, rollout_png)
    rollout: dict | None = None  # {"shortcut": ..., "cache": ...} rollout errors on the store's validation trajectories


@api
def bench(
    recipe,
    *,
    shortcut=None,
    steps: int | None = None,
    budgets: list[int] | None = None,
    methods: list[str] | None = None,
    vanilla_steps: list[int] | None = None,
    prompts: str | list[str] | None = None,
    classes: list[int] | None = None,
    num_samples: int | None = None,
    batch_size: int | None = None,
    repeats: int | None = None,
    schedule: str | None = None,
    metrics: list[str] | None = None,
    store: str | None = None,
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

    Unset arguments take the recipe's `bench` section. Lists are lists (budgets=[4, 6]; the CLI
    splits comma-separated text); `methods` entries may name their own budgets ("shortcut:3/4/6"). `prompts`: a list, a
    text file (one prompt a line) or bench-set / selection-set; `classes`: class ids instead.
    `shortcut`: a checkpoint directory (default: the recipe's). `store`: a trajectory store whose
    validation trajectories give the samples, vanilla-N's images (the recorded ones) and a rollout
    error report; searched schedules missing for `schedule` searched / both are searched there first
    (`migmcut.benchmark.search`). `progress(what, done, total)` follows the work; `warn(line)` gets a
    line per metric skipped for missing weights.

    Each configuration is kept in `out`/state/ as it finishes (`BenchState`): the same call again
    after an interrupt continues, computing only what is missing; `out` holding a bench of another
    plan is refused unless `overwrite`. `out` is created only once every argument is checked.
    """
    rec = as_recipe(recipe)
    cfg = rec.bench
    N = steps if steps is not None else (cfg.steps or rec.sampler.steps)
    budget_list = int_list(budgets, "budgets") if budgets is not None else list(cfg.budgets)
    method_list = name_list(methods, "methods") if methods is not None else list(cfg.methods)
    mode = schedule or cfg.schedule
    front_steps = int_list(vanilla_steps, "vanilla_steps") if vanilla_steps is not None else cfg.vanilla_steps
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
    checkpoint = shortcut if shortcut is not None else resolve_checkpoint(rec.shortcut.checkpoint)
    given = None
    if isinstance(prompts, str):
        given = default_prompts(dataclasses.replace(rec, bench=dataclasses.replace(cfg, prompts=prompts)))
    elif prompts is not None:
        given = list(prompts)
    elif classes is not None:
        given = int_list(classes, "classes")
    metric_names = name_list(metrics, "metrics") if metrics is not None else list(cfg.metrics) or default_metric_names(rec.base.kind)
    for m in metric_names:
        if m not in REGISTRY:
            raise UserError(f"unknown metric {m!r}: choose from {', '.join(REGISTRY)}")
    out_dir = check_writable_dir(out)  # made once everything is checked

    dev, dt = placement(device, dtype, base)
    base = base if base is not None else load_base(rec.base, dev, dt)
    if N > base.num_tokens:
        raise UserError(f"{arg('steps', N)} exceeds the number of image tokens ({base.num_tokens})")
    with_shortcut = [m for m in method_budgets if get_method(m).needs_shortcut]
    if any(get_method(m).needs_partial for m in method_budgets):
        base.require_partial()
    net, meta = None, {}
    if checkpoint is not None and (with_shortcut or store is not None):
        net, meta = load_shortcut(checkpoint, base)
        net = net.to(device=dev, dtype=next(base.parameters()).dtype)
    elif with_shortcut:
        raise UserError(f"method {with_shortcut[0]} needs a shortcut checkpoint: "
                        f"pass {arg('shortcut', 'DIR')} (made by migmcut train) or drop {' / '.join(with_shortcut)} from "
                        f"{arg('methods')}")

    opened = open_store(store, base, rec, N) if store is not None else None
    val_idx = validation_indices(opened, meta, rec, store) if opened is not None else None

    searched: dict[int, list[int]] = {}
    errors = None
    searchable = [m for m in method_budgets if get_method(m).searched]
    if searchable and mode in ("auto", "searched", "both"):
        missing = []
        for B in sorted({b for m in searchable for b in method_budgets[m]}):
            full = load_schedule(checkpoint, N, B)
            if full is None:
                missing.append(B)
            else:
                searched[B] = full
        if missing and mode != "auto":
            if opened is None:
                raise UserError(f"no searched schedule for N={N}, B={','.join(map(str, missing))} in {checkpoint}: "
                                f"run migmcut schedule search --store STORE (or pass {arg('store')} to bench)")
            found, _, errors = search_and_save(opened, val_idx, base, net, checkpoint, missing, store, dev)
            searched.update({r.budget: r.full_steps for r in found})
    knobs = {m: rec.knobs_for(m) for m in method_budgets}
    knob_settings = {m: dataclasses.asdict(k) for m, k in knobs.items() if k is not None}
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
        "format": 1, "base": base.fingerprint, "sampler": dataclasses.asdict(sampler_for(plan, configs[0])),
        "knobs": knob_settings, "shortcut": _file_digest(checkpoint) if net is not None else None,
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
                                "knobs": knob_settings})
        files = write_outputs(out_dir, result)
        if errors is not None:
            files.update(write_rollout(out_dir, errors, {"store": store, "val_trajectories": int(len(val_idx)),
                                                         "steps": N}))
    return BenchRun(result, files, errors)


def _file_digest(checkpoint) -> str:
    """sha256 of a shortcut checkpoint's weights: the same directory retrained is another plan."""
    return hashlib.sha256((Path(checkpoint).expanduser() / "shortcut.safetensors").read_bytes()).hexdigest()
