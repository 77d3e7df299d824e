"""`migmcut schedule search`: where the full steps go for each budget, searched on a store's
validation trajectories and saved beside the shortcut checkpoint (`schedules.json`), where
`generate` and `bench` (`--schedule auto` or `searched`) take it from."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from migmcut.cli.common import (
    DeviceOpt, DtypeOpt, JsonOpt, PresetOpt, RecipeOpt, SetOpt, emit, handle_errors, load, parse_int_list, results,
)

app = typer.Typer(help="Full-step placements (schedules) saved beside a shortcut checkpoint.", no_args_is_help=True)


def print_schedules(found) -> None:
    from rich.table import Table

    from migmcut import schedule_search as ss

    table = Table(title=f"searched schedules (objective: {ss.OBJECTIVE_TEXT})", title_justify="left")
    for col in ("N", "B", "searched full steps", "objective", "uniform full steps", "objective "):
        table.add_column(col)
    for r in found:
        table.add_row(str(r.steps), str(r.budget), str(r.full_steps), f"{r.objective:.4g}",
                      str(r.uniform_steps), f"{r.uniform_objective:.4g}")
    results.print(table)


def show(run, as_json: bool) -> None:
    """A search's schedules and where they were saved: a table, or one JSON object with --json."""
    if not as_json:
        print_schedules(run.schedules)
        results.print(f"saved to {run.file}")
    emit(as_json, {"schedules": [{"steps": r.steps, "budget": r.budget, **r.to_dict()} for r in run.schedules],
                   "file": run.file})


@app.command("search")
@handle_errors
def search(
    store: Annotated[str, typer.Option(help="Trajectory store: the rollout errors are measured on its validation trajectories (those the shortcut was not trained on).", show_default=False)],
    shortcut: Annotated[Optional[Path], typer.Option(help="Shortcut checkpoint directory; the schedules are saved in it (default: the recipe's; a shipped one is never written: search on a copy).")] = None,
    budgets: Annotated[Optional[str], typer.Option(help="Full-step budgets B, comma-separated, e.g. 3,4,5,6 (default: the recipe's bench.budgets).")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Sampling steps N: the store's (default: the recipe's bench.steps or sampler.steps).")] = None,
    recipe: RecipeOpt = "tiny-shapes",
    set_: SetOpt = None,
    preset: PresetOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = "auto",
    json_: JsonOpt = False,
):
    """Search where the full steps go for each budget and save it beside the shortcut (schedules.json)."""
    from migmcut.benchmark.search import search_schedules

    rec = load(recipe, set_, preset)
    run = search_schedules(rec, store, shortcut=shortcut, steps=steps, budgets=parse_int_list(budgets, "budgets"),
                           device=device, dtype=dtype)
    show(run, json_)
