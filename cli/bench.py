"""`migmcut bench`: vanilla and the accelerated methods on the same prompts and seeds, timed and scored.

`--search-schedule` is a deprecated alias of `migmcut schedule search` (cli/schedule.py), kept
for one release: it says so on stderr and does the same.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from migmcut.cli import schedule as schedule_cli
from migmcut.cli.common import (
    DeviceOpt, DtypeOpt, JsonOpt, PresetOpt, RecipeOpt, SeedOpt, SetOpt, console, emit, handle_errors, load,
    parse_int_list, parse_names, progress, results,
)
from migmcut.errors import UserError, arg
from migmcut.methods import BUILTIN


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


@handle_errors
def bench(
    shortcut: Annotated[Optional[Path], typer.Option(help="Shortcut checkpoint directory, or the paper's released .pth (default: the recipe's).")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Sampling steps N (default: the recipe's bench.steps or sampler.steps).")] = None,
    budgets: Annotated[Optional[str], typer.Option(help="Full-step budgets B, comma-separated, e.g. 2,4,8 (default: the recipe's bench.budgets, 4,6 on tiny-shapes).")] = None,
    methods: Annotated[Optional[str], typer.Option(help=f"Comma-separated subset of {','.join(BUILTIN)} (or registered methods), each at --budgets or at its own as NAME:B1/B2 (e.g. shortcut:3/4/6; adaptive-shortcut:6 caps base calls per sample, and adaptive methods take no --budgets); knob sweeps as NAME@KNOB=V1/V2 (e.g. adaptive@threshold=0.8/0.9, adaptive-shortcut:6@signal=change@threshold=0.1/0.2), one row each. vanilla always runs: it is the front (adaptive vanilla joins it). Knobs: --set recap.local=K etc., as generate.")] = None,
    vanilla_steps: Annotated[Optional[str], typer.Option(help="Vanilla step counts for the front, comma-separated, each in [1, N] (default: N and every budget, then whatever the front needs).")] = None,
    prompts: Annotated[Optional[str], typer.Option(help="Text file, one prompt a line, or bench-set / selection-set (tiny-shapes' shipped held-out sets; default: the recipe's bench.prompts).")] = None,
    classes: Annotated[Optional[str], typer.Option(help="Class ids, comma-separated (class-conditional bases).")] = None,
    num_samples: Annotated[Optional[int], typer.Option(help="Images per configuration, prompts cycled (default: the recipe's bench.num_samples, 384 on tiny-shapes).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Sampler batch size, the same for every configuration.")] = None,
    repeats: Annotated[Optional[int], typer.Option(help="Timed repeats per configuration (median reported).")] = None,
    schedule: Annotated[Optional[str], typer.Option(help="Shortcut full-step placement: auto (as generate: searched where saved beside the shortcut, else uniform), uniform, searched or both.")] = None,
    metrics: Annotated[Optional[str], typer.Option(help="Comma-separated metrics (default: by base kind).")] = None,
    store: Annotated[Optional[str], typer.Option(help="Trajectory store: recorded rollouts as the vanilla-N reference, plus a rollout-error report.")] = None,
    search_schedule: Annotated[bool, typer.Option("--search-schedule", help="Deprecated: use migmcut schedule search (the same, for one release).")] = False,
    out: Annotated[Path, typer.Option(help="Directory for bench.json, bench.csv, pareto.png (and rollout.*); state/ in it keeps each configuration as it finishes, and the same command again continues an interrupted bench.")] = Path("bench"),
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the bench already in OUT (one of another plan is refused otherwise; one of the same plan is continued).")] = False,
    recipe: RecipeOpt = "tiny-shapes",
    set_: SetOpt = None,
    preset: PresetOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = "auto",
    seed: SeedOpt = 0,
    json_: JsonOpt = False,
):
    """Measure speed and quality of vanilla and accelerated sampling side by side."""
    from migmcut.benchmark import bench as run_bench
    from migmcut.benchmark.search import search_schedules

    if search_schedule:
        console.print("--search-schedule is deprecated: use migmcut schedule search", highlight=False, soft_wrap=True)
    rec = load(recipe, set_, preset)
    if search_schedule:
        budget_list = parse_int_list(budgets, "budgets")
        if store is None:
            raise UserError(f"{arg('search_schedule', True)} needs {arg('store', 'STORE')} (validation trajectories to "
                            "measure rollout errors on)")
        schedule_cli.show(search_schedules(rec, store, shortcut=shortcut, steps=steps, budgets=budget_list,
                                           device=device, dtype=dtype), json_)
        return
    budgets_, methods_ = parse_int_list(budgets, "budgets"), parse_names(methods)  # the library takes lists
    vanilla_steps_, classes_ = parse_int_list(vanilla_steps, "vanilla_steps"), parse_int_list(classes, "classes")
    metrics_ = parse_names(metrics)
    with progress(True, plain=True) as bar:  # stderr, with --json too
        task = bar.add_task("bench", total=None)

        def report(desc, done, total):
            bar.update(task, description=desc, completed=done, total=total)

        run = run_bench(
            rec, shortcut=shortcut, steps=steps, budgets=budgets_, methods=methods_, vanilla_steps=vanilla_steps_,
            prompts=prompts, classes=classes_, num_samples=num_samples, batch_size=batch_size, repeats=repeats,
            schedule=schedule, metrics=metrics_, store=store, out=out, overwrite=overwrite, seed=seed,
            device=device, dtype=dtype, progress=report, warn=lambda line: console.print(line, highlight=False, soft_wrap=True),
        )
    result = run.result
    if not json_:
        _print_rows(result.rows, result.timing, list(result.higher), list(result.higher))
        if run.rollout is not None:
            _print_rollout(run.rollout)
        results.print(f"wrote {', '.join(Path(p).name for p in run.files.values())} to {Path(out).expanduser()}")
    emit(json_, {"rows": result.rows, "timing": result.timing, "files": run.files})
