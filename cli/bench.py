"""`migmcut bench`: vanilla and the accelerated methods on the same prompts and seeds, timed and scored.

Also `--search-schedule` (with `--store` and a shortcut): search the full-step placement per
budget on the store's validation trajectories and save it beside the shortcut checkpoint
(`schedules.json`), for `--schedule searched`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Optional

import typer

from migmcut.cli.common import (
    BATCH_MAX, COUNT_MAX, SEED_MAX, DeviceOpt, DtypeOpt, JsonOpt, RecipeOpt, SeedOpt, SetOpt, check_range, console, results,
    emit, handle_errors, load, progress, resolve_device, resolve_dtype, writable_dir,
)
from migmcut.errors import UserError


def _short(name: str) -> str:
    return name.replace("_accuracy", " acc").replace("prompt acc", "prompt")


def _print_rows(rows: list[dict], timing: dict, metrics: list[str], compared: list[str]) -> None:
    """The table shows each metric's main figure (with its interval); bench.json / bench.csv hold them all."""
    from rich.table import Table

    table = Table(title="migmcut bench", title_justify="left")
    for col in ("configuration", "base calls", "step cost", "s / image", "speedup", "front", "front speedup", "ceiling",
                "bound"):
        table.add_column(col, justify="left" if col in ("configuration", "front") else "right")
    for m in metrics:
        table.add_column(_short(m), justify="right")
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731

    def quality(r, m):
        iv = r.get("interval", {}).get(m)
        text = fmt(r["quality"].get(m), ".3f" if m.endswith("accuracy") else ".4g")
        return text if not iv else f"{text} [{iv[0]:.3g}, {iv[1]:.3g}]"

    for r in rows:
        front = r.get("front_vanilla")
        table.add_row(
            r["label"] + (" *" if r.get("images") == "store" else ""), str(r["base_calls"]), fmt(r.get("step_cost"), ".3f"),
            fmt(r["seconds_per_image"], ".4f"), fmt(r["speedup"], ".2f") + "x",
            "-" if front is None else (">" if r.get("front_beyond") else "") + front,
            "-" if r.get("front_speedup") is None else fmt(r["front_speedup"], ".2f") + "x",
            fmt(r.get("ceiling"), ".2f"), fmt(r.get("bound"), ".2f"), *[quality(r, m) for m in metrics],
        )
    from rich.console import Console

    (results if results.is_terminal else Console(highlight=False, width=220)).print(table)  # off a terminal: unwrapped
    if compared:
        results.print(f"front: the fastest vanilla at least as good on {' and '.join(compared)} (a tie inside the "
                      "paired bootstrap interval counts); ceiling: the front speedup at vanilla-N's quality; "
                      "step cost: each non-full step's seconds over a vanilla-N step's; "
                      "> : better than every vanilla run")
    if timing:
        results.print(
            f"c = {timing['c']:.3f} (shortcut call {timing['shortcut_s'] * 1e3:.2f} ms / base forward "
            f"{timing['base_forward_s'] * 1e3:.2f} ms at the bench batch size)"
        )
    if any(r.get("images") == "store" for r in rows):
        results.print("* quality from the store's recorded rollouts (timing measured)")


def _print_rollout(errors: dict) -> None:
    from rich.table import Table

    from migmcut import schedule_search as ss

    table = Table(title="rollout error on validation trajectories (k shortcut steps after a full step)",
                  title_justify="left")
    table.add_column("k", justify="right")
    for name in errors:
        for m in ss.METRICS:
            table.add_column(f"{name} {m}", justify="right")
    steps = next(iter(errors.values())).steps
    cols = {(n, m): e.by_k(m) for n, e in errors.items() for m in ss.METRICS}
    for k in range(1, steps):
        table.add_row(str(k), *[f"{cols[(n, m)][k - 1]:.4g}" for n in errors for m in ss.METRICS])
    results.print(table)


def _print_schedules(found) -> None:
    from rich.table import Table

    from migmcut import schedule_search as ss

    table = Table(title=f"searched schedules (objective: {ss.OBJECTIVE_TEXT})", title_justify="left")
    for col in ("N", "B", "searched full steps", "objective", "uniform full steps", "objective "):
        table.add_column(col)
    for r in found:
        table.add_row(str(r.steps), str(r.budget), str(r.full_steps), f"{r.objective:.4g}",
                      str(r.uniform_steps), f"{r.uniform_objective:.4g}")
    results.print(table)


def _open_store(url: str, base, recipe, steps: int):

    from migmcut.errors import StoreError
    from migmcut.store.reader import TrajectoryStore

    store = TrajectoryStore(url)
    if store.fingerprint != base.fingerprint:
        raise StoreError(f"--store {url} was recorded with base {store.fingerprint}, but recipe {recipe.name} "
                         f"has base {base.fingerprint}: use the recipe the store was recorded with")
    if store.steps != steps:
        raise StoreError(f"--store {url} was recorded with {store.steps} steps, not {steps}: pass --steps {store.steps}")
    recorded = store.recipe().sampler
    if dataclasses.replace(recorded, steps=steps) != dataclasses.replace(recipe.sampler, steps=steps):
        raise StoreError(f"--store {url} was recorded with other sampler settings ({recorded}): use its recipe")
    if len(store.complete_indices()) == 0:
        raise StoreError(f"--store {url} has no complete trajectories: run migmcut record first")
    return store


@handle_errors
def bench(
    shortcut: Annotated[Optional[Path], typer.Option(help="Shortcut checkpoint directory (default: the recipe's).")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Sampling steps N (default: the recipe's bench.steps or sampler.steps).")] = None,
    budgets: Annotated[Optional[str], typer.Option(help="Full-step budgets B, comma-separated, e.g. 2,4,8 (default: the recipe's bench.budgets, 4,6 on tiny-shapes).")] = None,
    methods: Annotated[Optional[str], typer.Option(help="Comma-separated subset of vanilla,cache,shortcut,recap,mlcache,hybrid, each at --budgets or at its own as NAME:B1/B2 (e.g. shortcut:3/4/6); vanilla always runs: it is the front. Knobs: --set recap.local=K etc., as generate.")] = None,
    vanilla_steps: Annotated[Optional[str], typer.Option(help="Vanilla step counts for the front, comma-separated, each in [1, N] (default: N and every budget, then whatever the front needs).")] = None,
    prompts: Annotated[Optional[str], typer.Option(help="Text file, one prompt a line, or bench-set / selection-set (tiny-shapes' shipped held-out sets; default: the recipe's bench.prompts).")] = None,
    classes: Annotated[Optional[str], typer.Option(help="Class ids, comma-separated (class-conditional bases).")] = None,
    num_samples: Annotated[Optional[int], typer.Option(help="Images per configuration, prompts cycled (default: the recipe's bench.num_samples, 384 on tiny-shapes).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Sampler batch size, the same for every configuration.")] = None,
    repeats: Annotated[Optional[int], typer.Option(help="Timed repeats per configuration (median reported).")] = None,
    schedule: Annotated[Optional[str], typer.Option(help="Shortcut full-step placement: auto (as generate: searched where saved beside the shortcut, else uniform), uniform, searched or both.")] = None,
    metrics: Annotated[Optional[str], typer.Option(help="Comma-separated metrics (default: by base kind).")] = None,
    store: Annotated[Optional[str], typer.Option(help="Trajectory store: recorded rollouts as the vanilla-N reference, plus a rollout-error report.")] = None,
    search_schedule: Annotated[bool, typer.Option("--search-schedule", help="Only search schedules on --store's validation trajectories and save them beside the shortcut.")] = False,
    out: Annotated[Path, typer.Option(help="Directory for bench.json, bench.csv, pareto.png (and rollout.*).")] = Path("bench"),
    recipe: RecipeOpt = "tiny-shapes",
    set_: SetOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = "auto",
    seed: SeedOpt = 0,
    json_: JsonOpt = False,
):
    """Measure speed and quality of vanilla and accelerated sampling side by side."""
    import numpy as np
    import torch

    from migmcut import bench as lib
    from migmcut import schedule_search as ss
    from migmcut.base import load_base
    from migmcut.metrics import MetricSettings, build_metrics, default_metric_names
    from migmcut.policies import NEEDS_SHORTCUT, PARTIAL, PolicyKnobs
    from migmcut.shortcut import load_shortcut, resolve_checkpoint

    rec = load(recipe, set_)
    cfg = rec.bench
    N = steps if steps is not None else (cfg.steps or rec.sampler.steps)
    budget_list = lib.parse_int_list(budgets, "--budgets") if budgets is not None else list(cfg.budgets)
    method_list = [m.strip() for m in methods.split(",") if m.strip()] if methods is not None else list(cfg.methods)
    mode = schedule or cfg.schedule
    front_steps = lib.parse_int_list(vanilla_steps, "--vanilla-steps") if vanilla_steps is not None else cfg.vanilla_steps
    lib.check_plan(N, budget_list, method_list, mode, front_steps)
    method_budgets = lib.split_methods(method_list, budget_list)
    bs = batch_size if batch_size is not None else (cfg.batch_size or rec.generate.batch_size)
    reps = repeats if repeats is not None else cfg.repeats
    for name, value, low, high in (("--batch-size", bs, 1, BATCH_MAX), ("--repeats", reps, 1, 1000),
                                   ("--num-samples", num_samples, 1, COUNT_MAX), ("--seed", seed, 0, SEED_MAX)):
        check_range(name, value, low, high)  # --steps and --budgets: check_plan above
    if prompts is not None and classes is not None:
        raise UserError("give --prompts or --classes, not both")
    if store is not None and (prompts is not None or classes is not None):
        raise UserError("--store takes its prompts and seeds from the store: drop --prompts / --classes")
    if search_schedule and store is None:
        raise UserError("--search-schedule needs --store STORE (validation trajectories to measure rollout errors on)")
    if search_schedule:
        ss.check_writable(shortcut or resolve_checkpoint(rec.shortcut.checkpoint))
    file_prompts = None
    if prompts is not None:
        file_prompts = lib.default_prompts(dataclasses.replace(rec, bench=dataclasses.replace(cfg, prompts=prompts)))
    class_ids = lib.parse_int_list(classes, "--classes") if classes is not None else None
    metric_names = ([m.strip() for m in metrics.split(",") if m.strip()] if metrics is not None
                    else list(cfg.metrics) or default_metric_names(rec.base.kind))
    from migmcut.metrics import REGISTRY

    for m in metric_names:
        if m not in REGISTRY:
            raise UserError(f"unknown metric {m!r}: choose from {', '.join(REGISTRY)}")
    out_dir = None if search_schedule else writable_dir(out, "--out")

    dev = resolve_device(device)
    base = load_base(rec.base, dev, resolve_dtype(dtype, dev))
    if N > base.num_tokens:
        raise UserError(f"--steps {N} exceeds the number of image tokens ({base.num_tokens})")
    checkpoint = shortcut or resolve_checkpoint(rec.shortcut.checkpoint)
    need_shortcut = any(m in NEEDS_SHORTCUT for m in method_budgets) or search_schedule
    if any(m in PARTIAL for m in method_budgets):
        base._require_partial()
    net, meta = None, {}
    if checkpoint is not None and (need_shortcut or store is not None):
        net, meta = load_shortcut(checkpoint, base)
        net = net.to(device=dev, dtype=next(base.parameters()).dtype)
    elif need_shortcut:
        raise UserError(f"method {next(m for m in method_budgets if m in NEEDS_SHORTCUT)} needs a shortcut checkpoint: "
                        "pass --shortcut DIR (made by migmcut train) or drop shortcut / hybrid from --methods")

    opened = _open_store(store, base, rec, N) if store is not None else None
    val_idx = None
    if opened is not None:
        tmeta = meta.get("train", {}) if meta.get("store") else {}
        _, val_idx = opened.split(tmeta.get("val_fraction", rec.train.val_fraction), seed=tmeta.get("seed", rec.train.seed))
        if len(val_idx) == 0:
            raise UserError(f"--store {store}: no validation trajectories (record more)")

    def search_now(budget_values):
        errors = ss.rollout_errors(opened, val_idx, base, net.float(), device=dev)
        found = ss.search(errors["shortcut"], budget_values)
        path = ss.save_schedules(checkpoint, found, {"store": str(store), "val_trajectories": int(len(val_idx)),
                                                       "objective": ss.OBJECTIVE_TEXT})
        net.to(dtype=next(base.parameters()).dtype)
        return found, path, errors

    if search_schedule:
        found, path, _ = search_now(budget_list)
        if not json_:
            _print_schedules(found)
            results.print(f"saved to {path}")
        emit(json_, {"schedules": [{"steps": r.steps, "budget": r.budget, **r.to_dict()} for r in found],
                     "file": str(path)})
        return

    searched: dict[int, list[int]] = {}
    errors = None
    if any(m in NEEDS_SHORTCUT for m in method_budgets) and mode in ("auto", "searched", "both"):
        missing = []
        for B in sorted({b for m in NEEDS_SHORTCUT for b in method_budgets.get(m, ())}):
            full = ss.load_schedule(checkpoint, N, B)
            if full is None:
                missing.append(B)
            else:
                searched[B] = full
        if missing and mode != "auto":
            if opened is None:
                raise UserError(f"no searched schedule for N={N}, B={','.join(map(str, missing))} in {checkpoint}: "
                                f"run migmcut bench --search-schedule --store STORE (or pass --store)")
            found, _, errors = search_now(missing)
            searched.update({r.budget: r.full_steps for r in found})
    knobs = PolicyKnobs.of(rec)
    configs = lib.configurations(N, budget_list, method_list, mode, searched, front_steps, rec.sampler.budget_rounding,
                                 knobs)

    reference = None
    if opened is not None:
        chosen = [int(i) for i in val_idx[: num_samples or len(val_idx)]]
        arrays = opened._arrays()
        conditions = [arrays[opened.condition_kind][i] for i in chosen]
        conditions = [c.item() if hasattr(c, "item") else c for c in conditions]
        seeds = [int(arrays["seeds"][i]) for i in chosen]
        tokens = torch.from_numpy(np.stack([arrays["tokens"][i] for i in chosen]).astype("int64")).to(dev)
        reference = {"images": np.concatenate([base.decode(tokens[lo : lo + bs]) for lo in range(0, len(chosen), bs)])}
    else:
        n = num_samples if num_samples is not None else cfg.num_samples
        if file_prompts is not None:
            conditions = lib.expand(file_prompts, n)
        elif class_ids is not None:
            conditions = lib.expand(class_ids, n)
        else:
            conditions = lib.expand(lib.default_prompts(rec), n)
        seeds = lib.sample_seeds(seed, len(conditions))
    for c in conditions:
        if isinstance(c, str) and not c.strip():
            raise UserError("empty prompt in the bench prompts: every line needs a caption")
    base.encode_conditions(conditions)  # every condition valid before any work
    settings = MetricSettings(fid_inception=cfg.fid_inception, fid_reference=cfg.fid_reference,
                              clip_model=cfg.clip_model, device=str(dev))
    metric_list = build_metrics(metric_names, settings, warn=lambda line: console.print(line, highlight=False))

    plan = lib.Plan(sampler=rec.sampler, configs=configs, conditions=conditions, seeds=seeds, batch_size=bs,
                    repeats=reps, warmup=cfg.warmup, bootstrap=cfg.bootstrap, refine=front_steps is None, knobs=knobs)
    with progress(not json_) as bar:
        task = bar.add_task("bench", total=None)

        def report(desc, done, total):
            bar.update(task, description=desc, completed=done, total=total)

        result = lib.run_bench(base, plan, metric_list, shortcut=net, reference=reference, progress=report)
        if opened is not None and errors is None:
            bar.update(task, description="rollout errors", completed=0, total=None)
            errors = ss.rollout_errors(opened, val_idx, base, None if net is None else net.float(), device=dev)
    result.settings.update({"recipe": rec.name, "seed": seed, "store": store, "shortcut": str(checkpoint) if checkpoint else None,
                            "metrics": [m.name for m in metric_list], "device": str(dev),
                            "knobs": dataclasses.asdict(knobs)})
    files = lib.write_outputs(out_dir, result)
    if errors is not None:
        files.update(lib.write_rollout(out_dir, errors, {"store": store, "val_trajectories": int(len(val_idx)),
                                                         "steps": N}))
    if not json_:
        _print_rows(result.rows, result.timing, [m.primary for m in metric_list], list(result.higher))
        if errors is not None:
            _print_rollout(errors)
        results.print(f"wrote {', '.join(Path(p).name for p in files.values())} to {out_dir}")
    emit(json_, {"rows": result.rows, "timing": result.timing, "files": files})

