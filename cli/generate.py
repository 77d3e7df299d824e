"""`migmcut generate`: make images from prompts (or class ids) and write them as PNG files."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from migmcut.cli.common import (
    BATCH_MAX, COUNT_MAX, SEED_MAX, DeviceOpt, DtypeOpt, JsonOpt, RecipeOpt, SeedOpt, SetOpt, check_range, emit,
    handle_errors, load, progress, resolve_device, resolve_dtype, results, writable_dir,
)
from migmcut.files import atomic_write
from migmcut.errors import UserError


def _slug(condition) -> str:
    return re.sub(r"[^a-z0-9]+", "-", str(condition).lower()).strip("-")[:60] or "image"


@handle_errors
def generate(
    prompt: Annotated[Optional[list[str]], typer.Option("--prompt", "-p", help="A text prompt (repeatable).")] = None,
    class_id: Annotated[Optional[list[int]], typer.Option("--class", help="A class id, for class-conditional bases (repeatable).")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Sampling steps N (default: the recipe's).")] = None,
    budget: Annotated[Optional[int], typer.Option(help="Full base steps B out of N for an accelerated method (default: the recipe's shortcut.budget, 4 on tiny-shapes; mlcache: its own warm-up and refresh rule).")] = None,
    method: Annotated[Optional[str], typer.Option(help="vanilla, cache, shortcut, recap, mlcache or hybrid (default: shortcut when the recipe has a shortcut checkpoint, as tiny-shapes does, else vanilla). Knobs: --set recap.local=K, --set mlcache.cache_ratio=R (also warmup_ratio, refresh_interval), --set hybrid.candidates=C (also refresh_new, context).")] = None,
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

    started = time.perf_counter()
    if prompt and class_id:
        raise UserError("give --prompt or --class, not both")
    conditions = list(prompt or class_id or [])
    if not conditions:
        raise UserError("nothing to generate: give --prompt TEXT (or --class ID for class-conditional bases)")
    for name, value, low, high in (("--steps", steps, 1, COUNT_MAX), ("--budget", budget, 1, COUNT_MAX),
                                   ("--num-images", num_images, 1, COUNT_MAX), ("--batch-size", batch_size, 1, BATCH_MAX),
                                   ("--seed", seed, 0, SEED_MAX)):
        check_range(name, value, low, high)
    rec = load(recipe, set_)
    checkpoint = shortcut or resolve_checkpoint(rec.shortcut.checkpoint)
    method = method or ("shortcut" if checkpoint else "vanilla")
    n = steps if steps is not None else rec.sampler.steps
    if budget is None and method not in ("vanilla", "mlcache"):
        budget = rec.shortcut.budget
        if budget is not None and budget > n:
            raise UserError(f"the recipe's default budget ({budget} full steps) does not fit --steps {n}: "
                            f"pass --budget B with 1 <= B <= {n}")
    full_steps = None
    if schedule not in ("auto", "uniform", "searched"):
        raise UserError(f"--schedule {schedule!r}: choose auto, uniform or searched")
    # auto: the searched placement when one is saved for the shortcut; searched: required, any method
    if schedule == "searched" or (schedule == "auto" and method in ("shortcut", "hybrid")):
        from migmcut.schedule_search import load_schedule

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
    names = [f"{_slug(c)}.png" for c in conditions for _ in range(num_images)]
    paths = []
    with progress(not json_) as bar:
        task = bar.add_task("generating", total=len(names))

        def write(images):  # each batch as it finishes: an interrupted run keeps what it made
            for image in images:
                path = out_dir / f"{len(paths):04d}-{names[len(paths)]}"
                atomic_write(path, lambda p: Image.fromarray(image).save(p, format="PNG"))
                paths.append(str(path))
            bar.advance(task, len(images))

        result = run_generate(
            rec, conditions, num_images=num_images, seed=seed, steps=steps, method=method,
            budget=budget, shortcut=checkpoint, full_steps=full_steps, device=dev, dtype=resolve_dtype(dtype, dev),
            batch_size=batch_size, on_batch=write,
        )
    seconds = time.perf_counter() - started
    per_image = result.seconds / len(paths)
    if not json_:
        results.print(
            f"wrote {len(paths)} image(s) to {out_dir} ({result.method}, {result.steps} steps, "
            f"{per_image:.3f} s/image sampling and decoding; loading {result.load_seconds:.2f} s, {seconds:.2f} s in all)"
        )
    emit(json_, {
        "images": paths, "method": result.method, "steps": result.steps, "budget": result.budget,
        "full_steps": result.full_steps,
        "base_calls": result.base_calls, "shortcut_calls": result.shortcut_calls,
        "partial_calls": result.partial_calls, "seconds": round(seconds, 4),
        "load_seconds": round(result.load_seconds, 4), "sampling_seconds_per_image": round(per_image, 5),
    })
