"""Measure the tiny-shapes base on held-out prompts: prompt accuracy per attribute and fd.

    python -m migmcut.world.evaluate --num 256 --steps 16

Generates `--num` images from held-out one-shape prompts and `--num` from held-out two-shape
prompts (captions never seen in training), and prints one JSON object.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from PIL import Image

from migmcut.base import load_base
from migmcut.generation import generate
from migmcut.metrics import tiny_shapes_quality
from migmcut.recipe import load_recipe
from migmcut.world import shapes


def heldout_prompts(num: int, num_objects: int, seed: int) -> list[str]:
    specs = shapes.split_specs(True, num_objects)
    rng = np.random.default_rng(seed)
    if num_objects == 1:  # cycle through the few held-out single-shape captions evenly
        return [shapes.caption(specs[i % len(specs)]) for i in range(num)]
    return [shapes.caption(specs[i]) for i in rng.choice(len(specs), size=num, replace=False)]


def evaluate(recipe, num: int = 256, steps: int = 16, batch_size: int = 16, seed: int = 0, save: str | None = None,
             device: str = "cpu", dtype: torch.dtype = torch.float32) -> dict:
    """Quality of `recipe`'s base on `num` held-out one-shape and `num` two-shape prompts."""
    base = load_base(recipe.base, device, dtype)
    report = {"recipe": recipe.name, "fingerprint": base.fingerprint, "steps": steps}
    for n_obj, name in ((1, "one_shape"), (2, "two_shape")):
        prompts = heldout_prompts(num, n_obj, seed)
        out = generate(recipe, prompts, method="vanilla", seed=seed, steps=steps, batch_size=batch_size, base=base,
                       device=device, dtype=dtype)
        report[name] = tiny_shapes_quality(out.images, prompts)
        report[name]["seconds_per_image"] = out.seconds / len(prompts)  # sampling + decoding, not scoring
        if save:

            rows = [np.concatenate(out.images[r * 8 : r * 8 + 8], 1) for r in range(min(4, len(out.images) // 8))]
            if rows:
                Image.fromarray(np.concatenate(rows, 0)).save(f"{save}-{name}.png")
    return report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="tiny-shapes")
    p.add_argument("--set", action="append", default=[], dest="overrides")
    p.add_argument("--num", type=int, default=256)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--save", default=None, help="write contact sheets PREFIX-one_shape.png / -two_shape.png")
    args = p.parse_args()
    recipe = load_recipe(args.recipe, args.overrides)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    report = evaluate(recipe, args.num, args.steps, args.batch_size, args.seed, args.save, args.device, dtype)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
