"""`migmcut store info|verify`: inspect a trajectory store, check its integrity."""

from __future__ import annotations

from typing import Annotated

import typer

from migmcut.cli.common import JsonOpt, console, emit, handle_errors, progress, results
from migmcut.errors import StoreError

app = typer.Typer(help="Inspect and check trajectory stores.", no_args_is_help=True)

StoreArg = Annotated[str, typer.Argument(help="Store directory or fsspec URL.", show_default=False)]


@app.command("info")
@handle_errors
def info(store: StoreArg, json_: JsonOpt = False):
    """Summary: trajectories (complete / total), codec, shapes, bytes, recipe, base fingerprint."""
    from migmcut.store.inspect import info as store_info

    summary = store_info(store)
    if json_:
        emit(True, summary)
        return
    from rich.table import Table

    results.print(
        f"[bold]{summary['store']}[/bold]: {summary['complete']} of {summary['num']} trajectories complete, "
        f"recipe {summary['recipe']}, base {summary['fingerprint']}, codec {summary['codec']}",
        highlight=False,
    )
    results.print(
        f"steps {summary['steps']}, branches {summary['branches']}, L {summary['num_tokens']}, "
        f"D {summary['feature_dim']}, seed {summary['seed']}, {summary['condition']}, "
        f"block {summary['block_size']}, {summary['chunk_steps']} steps per chunk",
        highlight=False,
    )
    table = Table()
    for col in ("array", "shape", "dtype", "chunks", "shards", "stored"):
        table.add_column(col)
    for a in summary["arrays"]:
        table.add_row(a["name"], str(tuple(a["shape"])), a["dtype"], str(tuple(a["chunks"])),
                      str(tuple(a["shards"])) if a["shards"] else "-",
                      "missing" if a.get("missing") else f"{a['bytes_stored'] / 1e6:.2f} MB")
    results.print(table)
    per = summary["feature_bytes_per_trajectory"]
    extra = f"; features {per / 1e6:.3f} MB per trajectory, {summary['ratio_vs_fp32']}x smaller than fp32" if per else ""
    tol = f" (tolerance {summary['tolerance']:g})" if summary.get("tolerance") is not None else ""
    results.print(f"{summary['bytes'] / 1e6:.2f} MB on disk{extra}{tol}")
    est = summary["feature_bytes_per_trajectory_estimated"]
    results.print("features per trajectory by codec (est. for these shapes): "
                  + ", ".join(f"{c} {b / 1e6:.3f} MB" for c, b in est.items()))
    if summary["unreadable_complete_blocks"]:
        console.print("[yellow]some complete flags are unreadable: run `migmcut store verify`[/yellow]")


@app.command("verify")
@handle_errors
def verify(
    store: StoreArg,
    repair: Annotated[bool, typer.Option("--repair", help="Mark damaged trajectories incomplete so `migmcut record` recomputes them.")] = False,
    json_: JsonOpt = False,
):
    """Check every complete trajectory (decodes, checksums match, shapes agree); exit 2 on damage."""
    from migmcut.store.inspect import ranges
    from migmcut.store.inspect import verify as store_verify
    from migmcut.store.reader import TrajectoryStore

    total = int(TrajectoryStore(store).complete().sum())
    with progress(not json_) as bar:
        task = bar.add_task("verifying", total=total)
        report = store_verify(store, repair=repair, on_progress=lambda n: bar.advance(task, n))
    emit(json_, report)
    if report["problems"]:
        first = report["problems"][0]
        more = f" (+{len(report['problems']) - 1} more)" if len(report["problems"]) > 1 else ""
        where = f"trajectories {ranges(report['damaged'])} damaged: " if report["damaged"] else ""
        if report.get("repaired"):  # done what was asked: not an error
            if not json_:
                results.print(f"{report['store']}: {where}{first}{more}; marked incomplete: run the same "
                              "`migmcut record` command to recompute them")
            return
        if not report["damaged"]:
            todo = "the store's layout is damaged: record it again with --overwrite"
        else:
            todo = "run `migmcut store verify --repair`, then the same `migmcut record` command"
        raise StoreError(f"{report['store']}: {where}{first}{more}; {todo}")
    if not json_:
        results.print(f"{report['store']}: {report['checked']} complete trajectories verified, no damage")
