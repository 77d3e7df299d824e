"""migmcut: learned shortcuts that make masked image generation models several times faster.

    import migmcut

    recipe = migmcut.load_recipe("tiny-shapes")
    migmcut.record(recipe, "runs/store", num=1000)                      # teacher rollouts -> Zarr
    migmcut.train(recipe, "runs/store", "runs/sc", max_steps=4000)      # -> a shortcut checkpoint
    images = migmcut.generate(recipe, ["a large red circle"], shortcut="runs/sc", budget=4).images
    rows = migmcut.bench(recipe, shortcut="runs/sc", budgets=[4, 6], out="runs/bench").result.rows

Names are imported on first use, so `import migmcut` (and `migmcut --help`) loads no torch.
Each is a plain function of the module that holds its job: `generation`, `recording`, `training`,
`benchmark`, `hook` (e.g. `migmcut.benchmark.Configuration`).
"""

from __future__ import annotations

import importlib

_API = {"load_recipe": "recipe", "load_base": "base", "load_shortcut": "shortcut", "attach": "hook",
        "generate": "generation", "record": "recording", "train": "training", "bench": "benchmark"}
__all__ = list(_API)


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'migmcut' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"migmcut.{_API[name]}"), name)
    globals()[name] = value  # imported once
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
