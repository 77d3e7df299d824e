"""`migmcut train`: train the shortcut from a trajectory store."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from migmcut.cli.common import (
    DeviceOpt, DtypeOpt, JsonOpt, RecipeOpt, SeedOpt, SetOpt, console, emit, handle_errors, load, progress, results,
)


@handle_errors
def train(
    out: Annotated[Path, typer.Option(help="Checkpoint directory (shortcut.safetensors, config.json, trainer.pt).")],
    store: Annotated[Optional[str], typer.Option(help="Trajectory store made by `migmcut record` (path or URL); with --online, validation only.")] = None,
    online: Annotated[bool, typer.Option("--online", help="Train on the shortcut's own rollouts, the base as teacher at each step (train.online).")] = False,
    init: Annotated[Optional[str], typer.Option(help="Start from this shortcut checkpoint (a directory, builtin:NAME, or the paper's released .pth).")] = None,
    max_steps: Annotated[Optional[int], typer.Option(help="Optimizer steps (default: the recipe's train.max_steps).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Pairs per step (default: the recipe's).")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate (default: the recipe's).")] = None,
    workers: Annotated[Optional[int], typer.Option(help="DataLoader worker processes (default: the recipe's).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from OUT's trainer state.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the checkpoint already in OUT (a non-empty OUT is refused otherwise).")] = False,
    allow_incomplete: Annotated[bool, typer.Option("--allow-incomplete", help="Train on a store whose recording is not finished (its complete trajectories; the output counts them).")] = False,
    recipe: RecipeOpt = "tiny-shapes",
    set_: SetOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = "auto",
    seed: SeedOpt = 0,
    json_: JsonOpt = False,
):
    """Train a shortcut for the recipe's base model from recorded trajectories."""
    from migmcut.distributed import env_rank
    from migmcut.training import train as run_train

    rec = load(recipe, set_)
    main_rank = env_rank() == 0  # under torchrun only rank 0 reports
    with progress(main_rank and not json_, plain=True) as bar:
        task = None

        def log(step, stats):
            nonlocal task
            if task is None:
                task = bar.add_task("training", total=stats["max_steps"])
            bar.update(task, completed=step,
                       description=f"training loss {stats['loss']:.4f} {stats['pairs_per_s']:.0f} pairs/s")

        result = run_train(rec, store, out, max_steps=max_steps, batch_size=batch_size, lr=lr, workers=workers,
                           seed=seed, device=device, dtype=dtype, resume=resume, overwrite=overwrite, init=init,
                           online=online or None, allow_incomplete=allow_incomplete, log=log)
    if not main_rank:
        return
    if result.sampler_warning:
        console.print(f"warning: {result.sampler_warning}", highlight=False, soft_wrap=True)
    if not json_:
        figures = ", ".join(f"{k} {result.validation[k]:.4g}" for k in (
            "online_mse", "online_mse_identity", "val_mse", "val_mse_identity", "val_cos", "val_cos_identity",
            "val_top1", "val_top1_identity")
            if k in result.validation)
        done = result.steps - result.start_step
        what = (f"trained {done} steps (to step {result.steps}) in {result.seconds:.1f}s" if done
                else f"already trained to step {result.steps}: nothing to do")
        if result.trajectories is not None and result.trajectories < result.store_trajectories:
            what += f" on {result.trajectories} of the store's {result.store_trajectories} trajectories"
        results.print(f"{what} -> {result.out}: {figures}")
    emit(json_, result.to_json())
