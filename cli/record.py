"""`migmcut record`: teacher rollouts of the recipe's base model into a trajectory store."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from migmcut.cli.common import (
    DeviceOpt, DtypeOpt, JsonOpt, RecipeOpt, SeedOpt, SetOpt, emit, handle_errors, load, progress, results,
)
from migmcut.errors import UserError


@handle_errors
def record(
    out: Annotated[str, typer.Option("--out", "-o", help="Store directory or fsspec URL (memory://, s3://, file://...).")],
    num: Annotated[int, typer.Option("--num", "-n", help="Number of trajectories in the store (under torchrun write -n: torchrun mistakes --num for its --numa-binding).")] = 1000,
    batch_size: Annotated[Optional[int], typer.Option(help="Trajectories per sampler batch (default: the recipe's); does not change the store.")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Sampling steps N (default: the recipe's).")] = None,
    codec: Annotated[str, typer.Option(help="Feature codec: bf16 (lossless bfloat16), fp16, int8 (per-token absmax), or delta (steps coded against the previous one; ~1/3 of int8's bytes).")] = "bf16",
    tolerance: Annotated[Optional[float], typer.Option(help="delta codec: RMS error relative to the features' RMS (default 0.1).", show_default=False)] = None,
    block_size: Annotated[int, typer.Option(help="Trajectories per block: the unit of resume and of work per rank.")] = 16,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing store recorded with other settings.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the arrays, shapes and estimated bytes; record nothing.")] = False,
    recipe: RecipeOpt = "tiny-shapes",
    set_: SetOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = "auto",
    seed: SeedOpt = 0,
    json_: JsonOpt = False,
):
    """Record base-model feature trajectories (resumable; under torchrun every rank writes its share)."""
    from migmcut import distributed
    from migmcut.recording import dry_run as plan_record, record as run_record

    rank = distributed.env_rank()  # under torchrun only rank 0 speaks
    try:
        rec = load(recipe, set_)
        options = dict(num=num, batch_size=batch_size, steps=steps, codec=codec, seed=seed, overwrite=overwrite,
                       device=device, dtype=dtype, block_size=block_size, tolerance=tolerance)
        if dry_run:
            plan = plan_record(rec, out, **options)
            if rank == 0 and json_:
                emit(True, plan)
            elif rank == 0:
                _print_plan(plan)
            return
        with progress(not json_ and rank == 0, plain=True) as bar:
            state = {}

            def on_start(k, dist):
                if dist.rank == 0:
                    what = "recording" if dist.world == 1 else f"recording (rank 0 of {dist.world})"
                    state["task"] = bar.add_task(what, total=k)

            def on_progress(n):
                if "task" in state:
                    bar.advance(state["task"], n)

            result = run_record(rec, out, on_start=on_start, on_progress=on_progress, **options)
    except UserError:
        if rank != 0:
            raise typer.Exit(2) from None  # rank 0 says it, once
        raise
    if rank != 0:
        return
    if not json_:
        if result.written == 0:
            results.print(f"{result.store}: all {result.trajectories} trajectories already recorded; nothing to do")
        else:
            results.print(
                f"recorded {result.written} trajectories into {result.store} "
                f"({result.trajectories} in the store, {result.bytes / 1e6:.1f} MB, {result.seconds:.1f} s)"
            )
    emit(json_, result.to_json())


def _print_plan(plan: dict) -> None:
    from rich.table import Table

    tol = f" (tolerance {plan['tolerance']:g})" if plan.get("tolerance") is not None else ""
    table = Table(title=f"{plan['store']} ({plan['action']}): {plan['trajectories']} trajectories, codec {plan['codec']}{tol}")
    for col in ("array", "shape", "dtype", "chunks", "shards", "raw bytes"):
        table.add_column(col)
    for a in plan["arrays"]:
        table.add_row(a["name"], str(tuple(a["shape"])), a["dtype"], str(tuple(a["chunks"])),
                      str(tuple(a["shards"])) if a["shards"] else "-", _human(a["raw_bytes"]))
    results.print(table)
    results.print(
        f"estimated store size {_human(plan['bytes_estimated'])} "
        f"({_human(plan['bytes_per_trajectory_estimated'])} per trajectory; raw {_human(plan['bytes_raw'])}, "
        f"fp32 features {_human(plan['fp32_bytes_per_trajectory'])} per trajectory)"
    )
    per = plan["feature_bytes_per_trajectory_estimated"]
    results.print("features per trajectory by codec (est.): " + ", ".join(f"{c} {_human(b)}" for c, b in per.items()))


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)

