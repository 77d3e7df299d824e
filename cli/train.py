"""`migmcut train`: train the shortcut from a trajectory store."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from migmcut.cli.common import (
    BATCH_MAX, COUNT_MAX, SEED_MAX, DeviceOpt, DtypeOpt, JsonOpt, RecipeOpt, SeedOpt, SetOpt, check_range, emit,
    console, handle_errors, load, progress, resolve_device, resolve_dtype, results, writable_dir,
)


@handle_errors
def train(
    store: Annotated[str, typer.Option(help="Trajectory store made by `migmcut record` (path or URL).")],
    out: Annotated[Path, typer.Option(help="Checkpoint directory (shortcut.safetensors, config.json, trainer.pt).")],
    max_steps: Annotated[Optional[int], typer.Option(help="Optimizer steps (default: the recipe's train.max_steps).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Pairs per step (default: the recipe's).")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate (default: the recipe's).")] = None,
    workers: Annotated[Optional[int], typer.Option(help="DataLoader worker processes (default: the recipe's).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from OUT's trainer state.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the checkpoint already in OUT (a non-empty OUT is refused otherwise).")] = False,
    recipe: RecipeOpt = "tiny-shapes",
    set_: SetOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = "auto",
    seed: SeedOpt = 0,
    json_: JsonOpt = False,
):
    """Train a shortcut for the recipe's base model from recorded trajectories."""
    from migmcut.train import train as run_train

    for name, value, low, high in (("--max-steps", max_steps, 1, COUNT_MAX), ("--batch-size", batch_size, 1, BATCH_MAX),
                                   ("--workers", workers, 0, 256), ("--seed", seed, 0, SEED_MAX)):
        check_range(name, value, low, high)
    check_range("--lr", lr, 0, 10, low_open=True)
    rec = load(recipe, set_)
    overrides = {k: v for k, v in dict(max_steps=max_steps, batch_size=batch_size, lr=lr, num_workers=workers).items()
                 if v is not None}
    cfg = dataclasses.replace(rec.train, seed=seed, **overrides)
    cfg.validate()
    dev = resolve_device(device)
    main_rank = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 reports
    out_dir = writable_dir(out, "--out") if not resume else Path(out)
    with progress(main_rank and not json_, plain=True) as bar:
        task = bar.add_task("training", total=cfg.max_steps)

        def log(step, stats):
            bar.update(task, completed=step,
                       description=f"training loss {stats['loss']:.4f} {stats['pairs_per_s']:.0f} pairs/s")

        result = run_train(rec, store, out_dir, cfg, device=dev, dtype=resolve_dtype(dtype, dev), resume=resume,
                           overwrite=overwrite, log=log)
    if not main_rank:
        return
    if "sampler_warning" in result:
        console.print(f"warning: {result['sampler_warning']}", highlight=False, soft_wrap=True)
    if not json_:
        keys = ("val_mse", "val_mse_identity", "val_cos", "val_cos_identity", "val_top1", "val_top1_identity")
        figures = ", ".join(f"{k} {result[k]:.4g}" for k in keys if k in result)
        done = result["steps"] - result["start_step"]
        what = (f"trained {done} steps (to step {result['steps']}) in {result['seconds']:.1f}s" if done
                else f"already trained to step {result['steps']}: nothing to do")
        results.print(f"{what} -> {out_dir}: {figures}")
    emit(json_, result)
