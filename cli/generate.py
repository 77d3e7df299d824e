"""`migmcut generate`: make images from prompts (or class ids) and write them as PNG files."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Optional

import typer

from migmcut.cli.common import (
    DeviceOpt, DtypeOpt, JsonOpt, RecipeOpt, SeedOpt, SetOpt, console, emit, handle_errors, load,
    progress, resolve_device, resolve_dtype, writable_dir,
)
from migmcut.errors import UserError


def _slug(condition) -> str:
    return re.sub(r"[^a-z0-9]+", "-", str(condition).lower()).strip("-")[:60] or "image"


@handle_errors
def generate(
    prompt: Annotated[Optional[list[str]], typer.Option("--prompt", "-p", help="A text prompt (repeatable).")] = None,
    class_id: Annotated[Optional[list[int]], typer.Option("--class", help="A class id, for class-conditional bases (repeatable).")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Sampling steps N (default: the recipe's).")] = None,
    budget: Annotated[Optional[int], typer.Option(help="Full base steps B out of N (shortcut/cache).")] = None,
    method: Annotated[Optional[str], typer.Option(help="vanilla, cache or shortcut.")] = None,
    shortcut: Annotated[Optional[Path], typer.Option(help="Shortcut checkpoint directory.")] = None,
    schedule: Annotated[str, typer.Option(help="Full-step placement: auto (searched when saved beside the shortcut, else uniform), uniform, or searched (saved by bench --search-schedule).")] = "auto",
    num_images: Annotated[int, typer.Option("--num-images", "-n", help="Images per prompt.")] = 1,
    batch_size: Annotated[Optional[int], typer.Option(help="Images per sampler batch (default: the recipe's).")] = None,
    out: Annotated[Path, typer.Option(help="Directory for the PNG files.")] = Path("outputs"),
    recipe: RecipeOpt = "tiny-shapes",
    set_: SetOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = "auto",
    seed: SeedOpt = 0,
    json_: JsonOpt = False,
):
    """Generate images with the recipe's base model, vanilla or accelerated."""
    from PIL import Image

    from migmcut.generate import generate as run_generate
    from migmcut.shortcut import resolve_checkpoint

    if prompt and class_id:
        raise UserError("give --prompt or --class, not both")
    conditions = list(prompt or class_id or [])
    if not conditions:
        raise UserError("nothing to generate: give --prompt TEXT (or --class ID for class-conditional bases)")
    if batch_size is not None and batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {batch_size}")
    rec = load(recipe, set_)
    checkpoint = shortcut or resolve_checkpoint(rec.shortcut.checkpoint)
    method = method or ("shortcut" if checkpoint else "vanilla")
    budget = budget if budget is not None or method == "vanilla" else rec.shortcut.budget
    full_steps = None
    if schedule not in ("auto", "uniform", "searched"):
        raise UserError(f"--schedule {schedule!r}: choose auto, uniform or searched")
    # auto: the searched placement when one is saved for the shortcut; searched: required, any method
    if schedule == "searched" or (schedule == "auto" and method == "shortcut"):
        from migmcut.schedule_search import load_schedule

        n = steps if steps is not None else rec.sampler.steps
        if checkpoint is not None and budget is not None:
            full_steps = load_schedule(checkpoint, n, budget)
        if schedule == "searched" and full_steps is None:
            if checkpoint is None or budget is None:
                raise UserError("--schedule searched needs a shortcut checkpoint and --budget")
            raise UserError(
                f"no searched schedule for N={n}, B={budget} beside {checkpoint}: "
                "run migmcut bench --search-schedule --store STORE --shortcut CKPT first"
            )
    dev = resolve_device(device)
    out_dir = writable_dir(out, "--out")
    total = len(conditions) * max(num_images, 1)
    with progress(not json_) as bar:
        task = bar.add_task("generating", total=total)
        result = run_generate(
            rec, conditions, num_images=num_images, seed=seed, steps=steps, method=method,
            budget=budget, shortcut=checkpoint, full_steps=full_steps, device=dev, dtype=resolve_dtype(dtype, dev), batch_size=batch_size,
            on_batch=lambda n: bar.advance(task, n),
        )
    paths = []
    for i, (image, cond) in enumerate(zip(result.images, result.conditions)):
        path = out_dir / f"{i:04d}-{_slug(cond)}.png"
        tmp = path.with_name(path.name + ".tmp")
        Image.fromarray(image).save(tmp, format="PNG")
        os.replace(tmp, path)
        paths.append(str(path))
    if not json_:
        console.print(
            f"wrote {len(paths)} image(s) to {out_dir} ({result.method}, {result.steps} steps, "
            f"{result.seconds / len(paths):.2f} s/image)"
        )
    emit(json_, {
        "images": paths, "method": result.method, "steps": result.steps, "budget": result.budget,
        "full_steps": result.full_steps,
        "base_calls": result.base_calls, "shortcut_calls": result.shortcut_calls, "seconds": round(result.seconds, 4),
    })
