"""Measure the tiny-shapes base on held-out prompts: prompt accuracy per attribute and fd.

    python -m migmcut.world.evaluate --num 256 --steps 16

Generates `--num` images from held-out one-shape prompts and `--num` from held-out two-shape
prompts (captions never seen in training), and prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from migmcut.base import load_base
from migmcut.generate import generate
from migmcut.metrics import tiny_shapes_quality
from migmcut.recipe import load_recipe
from migmcut.world import shapes


def heldout_prompts(num: int, num_objects: int, seed: int) -> list[str]:
    specs = shapes.split_specs(True, num_objects)
    rng = np.random.default_rng(seed)
    if num_objects == 1:  # cycle through the few held-out single-shape captions evenly
        return [shapes.caption(specs[i % len(specs)]) for i in range(num)]
    return [shapes.caption(specs[i]) for i in rng.choice(len(specs), size=num, replace=False)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="tiny-shapes")
    p.add_argument("--set", action="append", default=[], dest="overrides")
    p.add_argument("--num", type=int, default=256)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save", default=None, help="write a contact sheet PNG of the first images here")
    args = p.parse_args()
    recipe = load_recipe(args.recipe, args.overrides)
    base = load_base(recipe.base)
    report = {"recipe": recipe.name, "fingerprint": base.fingerprint, "steps": args.steps}
    for n_obj, name in ((1, "one_shape"), (2, "two_shape")):
        prompts = heldout_prompts(args.num, n_obj, args.seed)
        t0 = time.perf_counter()
        out = generate(recipe, prompts, seed=args.seed, steps=args.steps, batch_size=args.batch_size, base=base)
        report[name] = tiny_shapes_quality(out.images, prompts)
        report[name]["seconds_per_image"] = (time.perf_counter() - t0) / len(prompts)
        if args.save:
            from PIL import Image

            sheet = np.concatenate([np.concatenate(out.images[r * 8 : r * 8 + 8], 1) for r in range(4)], 0)
            Image.fromarray(sheet).save(f"{args.save}-{name}.png")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
