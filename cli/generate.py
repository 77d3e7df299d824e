"""`migmcut generate`: make images from prompts (or class ids) and write them as PNG files."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from migmcut.cli.common import (
    DeviceOpt, DtypeOpt, JsonOpt, PresetOpt, RecipeOpt, SeedOpt, SetOpt, emit, handle_errors, load, progress, results,
)
from migmcut.errors import UserError
from migmcut.methods import BUILTIN


@handle_errors
def generate(
    prompt: Annotated[Optional[list[str]], typer.Option("--prompt", "-p", help="A text prompt (repeatable).")] = None,
    class_id: Annotated[Optional[list[int]], typer.Option("--class", help="A class id, for class-conditional bases (repeatable).")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Sampling steps N (default: the recipe's).")] = None,
    budget: Annotated[Optional[int], typer.Option(help="Full base steps B out of N for an accelerated method (default: the recipe's shortcut.budget, 6 on tiny-shapes; mlcache: its own warm-up and refresh rule; adaptive-shortcut, adaptive-combined: a cap on base calls per image).")] = None,
    method: Annotated[Optional[str], typer.Option(help=f"{', '.join(BUILTIN)} or a registered one (default: shortcut when the recipe has a shortcut checkpoint, as tiny-shapes does, else vanilla). Knobs: --set recap.local=K, --set mlcache.cache_ratio=R (also warmup_ratio, refresh_interval), --set hybrid.candidates=C (also refresh_new, context), --set adaptive.threshold=P, --set adaptive-shortcut.threshold=X (also signal, max_skip, budget), adaptive-combined: those and tokens=P.")] = None,
    shortcut: Annotated[Optional[Path], typer.Option(help="Shortcut checkpoint directory, or the paper's released .pth (maskgit-shortcut.pth, dimoo-shortcut.pth).")] = None,
    schedule: Annotated[str, typer.Option(help="Full-step placement: auto (searched when saved beside the shortcut, else uniform), uniform, or searched (saved by migmcut schedule search).")] = "auto",
    num_images: Annotated[int, typer.Option("--num-images", "-n", help="Images per prompt.")] = 1,
    batch_size: Annotated[Optional[int], typer.Option(help="Images per sampler batch (default: the recipe's).")] = None,
    out: Annotated[Path, typer.Option(help="Directory for the PNG files, NNNN-caption.png, numbered on from those already there (nothing is replaced).")] = Path("outputs"),
    recipe: RecipeOpt = "tiny-shapes",
    set_: SetOpt = None,
    preset: PresetOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = "auto",
    seed: SeedOpt = 0,
    json_: JsonOpt = False,
):
    """Generate images with the recipe's base model, vanilla or accelerated."""
    from migmcut.generation import generate as run_generate

    started = time.perf_counter()
    if prompt and class_id:
        raise UserError("give --prompt or --class, not both")
    conditions = list(prompt or class_id or [])
    if not conditions:
        raise UserError("nothing to generate: give --prompt TEXT (or --class ID for class-conditional bases)")
    rec = load(recipe, set_, preset)
    with progress(True, plain=True) as bar:  # stderr: with --json too
        task = bar.add_task("generating", total=len(conditions) * num_images)
        result = run_generate(
            rec, conditions, num_images=num_images, seed=seed, steps=steps, method=method, budget=budget,
            shortcut=shortcut, schedule=schedule, out=out, device=device, dtype=dtype, batch_size=batch_size,
            on_batch=lambda images: bar.advance(task, len(images)),
        )
    seconds = time.perf_counter() - started
    per_image = result.seconds / len(result.paths)
    if not json_:
        first, last = (Path(p).name for p in (result.paths[0], result.paths[-1]))
        names = first if first == last else f"{first} ... {last}"
        results.print(
            f"wrote {len(result.paths)} image(s) to {Path(result.paths[0]).parent} ({names}; {result.method}, {result.steps} steps, "
            f"{per_image:.3f} s/image sampling and decoding; loading {result.load_seconds:.2f} s, {seconds:.2f} s in all)"
        )
    emit(json_, {
        "images": result.paths, "method": result.method, "steps": result.steps, "budget": result.budget,
        "full_steps": result.full_steps,
        "base_calls": result.base_calls, "shortcut_calls": result.shortcut_calls,
        "partial_calls": result.partial_calls, "mean_base_calls": round(result.mean_base_calls, 4),
        "mean_shortcut_calls": round(result.mean_shortcut_calls, 4), "mean_steps": round(result.mean_steps, 4),
        "seconds": round(seconds, 4),
        "load_seconds": round(result.load_seconds, 4), "sampling_seconds_per_image": round(per_image, 5),
    })
