"""Library entry point for making images: recipe + conditions -> uint8 images (and PNG files).

    out = generate("tiny-shapes", ["a large red circle"], num_images=4, out="outputs")
    out.images.shape, out.method, out.full_steps      # (4, 64, 64, 3), 'shortcut', [0, 3, 6, 10]
"""

from __future__ import annotations

import dataclasses
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from migmcut.base import load_base
from migmcut.devices import placement
from migmcut.errors import BATCH_MAX, COUNT_MAX, SEED_MAX, UserError, api, arg, check_range
from migmcut.files import check_writable_dir, writable_dir, write_numbered
from migmcut.methods import get_method
from migmcut.policies import partial_calls
from migmcut.placement import resolve_schedule
from migmcut.recipe import Recipe, as_recipe
from migmcut.runner import resolve_run
from migmcut.sampler import trajectory_seed
from migmcut.shortcut import resolve_checkpoint


@dataclass
class Generated:
    images: np.ndarray  # uint8 (n, H, W, 3)
    conditions: list
    seeds: list[int]
    method: str
    steps: int
    full_steps: list[int]  # the steps that ran the base
    base_calls: int  # full base steps per image (an adaptive method: the base forwards of its last batch; see per_sample)
    shortcut_calls: int  # shortcut steps per image
    seconds: float  # sampling and decoding, every batch (not `on_batch`)
    load_seconds: float = 0.0  # loading the base and the shortcut, checking the conditions
    partial_calls: int = 0  # recap / mlcache / hybrid steps per image
    paths: list[str] = field(default_factory=list)  # the PNG files written (with `out`)
    # per image: "steps" run, "base_calls", "shortcut_calls" (adaptive methods differ from image to image)
    per_sample: dict[str, list[int]] = field(default_factory=dict)

    @property
    def budget(self) -> int:
        return len(self.full_steps)

    @property
    def mean_base_calls(self) -> float:
        return float(np.mean(self.per_sample["base_calls"]))

    @property
    def mean_shortcut_calls(self) -> float:
        return float(np.mean(self.per_sample["shortcut_calls"]))

    @property
    def mean_steps(self) -> float:
        return float(np.mean(self.per_sample["steps"]))


PER_SAMPLE = {"steps": "steps", "base_calls": "full", "shortcut_calls": "shortcut"}  # name -> SampleResult.per_sample key


def per_sample_figures(results: list) -> dict[str, list[int]]:
    """Steps, base calls and shortcut calls of each sample of `results` (SampleResults, in order)."""
    return {name: [int(v) for r in results for v in r.per_sample.get(key, torch.zeros(len(r.tokens), dtype=torch.long))]
            for name, key in PER_SAMPLE.items()}


def slug(condition) -> str:
    """A file-name fragment for a condition: "a large red circle" -> "a-large-red-circle"."""
    return re.sub(r"[^a-z0-9]+", "-", str(condition).lower()).strip("-")[:60] or "image"


@api
def generate(
    recipe: Recipe | str,
    conditions: list,
    *,
    num_images: int = 1,
    seed: int = 0,
    steps: int | None = None,
    method: str | None = None,
    budget: int | None = None,
    shortcut=None,
    schedule: str = "auto",
    full_steps: list[int] | None = None,
    out: str | Path | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype = "auto",
    batch_size: int | None = None,
    base=None,
    on_batch=None,
) -> Generated:
    """Generate `num_images` images per condition; image j of condition i uses seed index i*num_images+j.

    `recipe`: a Recipe or a recipe name / YAML path. `method`: vanilla, cache, shortcut, recap,
    mlcache, hybrid, adaptive, adaptive-shortcut or adaptive-combined (`migmcut.methods`; default:
    shortcut when there is a shortcut checkpoint, else vanilla).
    `shortcut`: a checkpoint directory or a loaded `Shortcut` (default: the recipe's).
    `budget`: full base steps out of `steps` (default: the recipe's `shortcut.budget`; for
    adaptive-shortcut / adaptive-combined a cap on base calls per image, none by default).
    `schedule`: where those go (auto, uniform or searched; see `placement.resolve_schedule`); `full_steps`
    places them explicitly instead. `out`: a directory to write each image to as a PNG
    (NNNN-caption.png), batch by batch, numbered on from the highest number already there, so that
    no run replaces another's images (runs writing there at the same time included). `device` None: the given base's, else cuda if available;
    `dtype` "auto": bf16 on a GPU, fp32 elsewhere. `on_batch(images)` is called after each batch
    with its uint8 images, in order.
    """
    loading = time.perf_counter()
    for name, value, low, high in (("steps", steps, 1, COUNT_MAX), ("budget", budget, 1, COUNT_MAX),
                                   ("num_images", num_images, 1, COUNT_MAX), ("batch_size", batch_size, 1, BATCH_MAX),
                                   ("seed", seed, 0, SEED_MAX)):
        check_range(name, value, low, high)
    if isinstance(conditions, (str, int)):
        conditions = [conditions]
    conditions = list(conditions)
    if not conditions:
        raise UserError(f"nothing to generate: {arg('conditions')} is empty (give prompts, or class ids for "
                        "class-conditional bases)")
    for c in conditions:
        if isinstance(c, str) and not c.strip():
            raise UserError("empty prompt: give a caption such as 'a large red circle'")
    recipe = as_recipe(recipe)
    config = dataclasses.replace(recipe.sampler, steps=steps if steps is not None else recipe.sampler.steps)
    if shortcut is None:
        shortcut = resolve_checkpoint(recipe.shortcut.checkpoint)
    method = method or ("shortcut" if shortcut is not None else "vanilla")
    if budget is None and full_steps is None and get_method(method).budget == "required":
        budget = recipe.shortcut.budget
        if budget is not None and budget > config.steps:
            raise UserError(f"the recipe's default budget ({budget} full steps) does not fit {arg('steps', config.steps)}: "
                            f"pass {arg('budget', 'B')} with 1 <= B <= {config.steps}")
    if budget is not None and not 1 <= budget <= config.steps:
        raise UserError(f"{arg('budget', budget)} must be between 1 and the step count ({config.steps})")
    if full_steps is None:
        full_steps = resolve_schedule(schedule, get_method(method).searched, config.steps, budget, shortcut)
    device, dtype = placement(device, dtype, base)
    out = check_writable_dir(out) if out is not None else None  # created once the input is known good
    base = base if base is not None else load_base(recipe.base, device, dtype)
    if config.steps > base.num_tokens:
        raise UserError(f"{arg('steps', config.steps)} exceeds the number of image tokens ({base.num_tokens})")
    base = base.to(device=device, dtype=dtype)
    run = resolve_run(base, config, method, budget=budget, full_steps=full_steps, shortcut=shortcut,
                      knobs=recipe.knobs_for(method))
    jobs = [(c, trajectory_seed(seed, i * num_images + j)) for i, c in enumerate(conditions) for j in range(num_images)]
    base.encode_conditions(conditions)  # validate every condition before any work
    if out is not None:
        out = writable_dir(out)
    bs = batch_size or recipe.generate.batch_size
    images, paths, counts, seconds, results = [], [], {}, 0.0, []
    load_seconds = time.perf_counter() - loading
    start = time.perf_counter()
    for lo, result in run.batches([c for c, _ in jobs], [s for _, s in jobs], bs):
        chunk = jobs[lo : lo + bs]
        images.append(base.decode(result.tokens))
        seconds += time.perf_counter() - start
        counts = result.counts
        results.append(result)
        if out is not None:  # each batch as it finishes: an interrupted run keeps what it made
            for image, (c, _) in zip(images[-1], chunk):  # numbered on from the files there: nothing replaced
                path = write_numbered(out, f"{slug(c)}.png", lambda p: Image.fromarray(image).save(p, format="PNG"))
                paths.append(str(path))
        if on_batch:
            on_batch(images[-1])
        start = time.perf_counter()
    return Generated(
        images=np.concatenate(images),
        conditions=[c for c, _ in jobs],
        seeds=[s for _, s in jobs],
        method=method,
        steps=config.steps,
        full_steps=run.full_steps,
        base_calls=counts.get("full", 0),
        shortcut_calls=counts.get("shortcut", 0),
        partial_calls=partial_calls(counts),
        seconds=seconds,
        load_seconds=load_seconds,
        paths=paths,
        per_sample=per_sample_figures(results),
    )
