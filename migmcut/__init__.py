"""migmcut: learned shortcuts that make masked image generation models several times faster.

    import migmcut

    recipe = migmcut.load_recipe("tiny-shapes")
    migmcut.record(recipe, "runs/store", num=1000)                      # teacher rollouts -> Zarr
    migmcut.train(recipe, "runs/store", "runs/sc", max_steps=4000)      # -> a shortcut checkpoint
    images = migmcut.generate(recipe, ["a large red circle"], shortcut="runs/sc", budget=4).images
    rows = migmcut.bench(recipe, shortcut="runs/sc", budgets=[4, 6], out="runs/bench").result.rows

Names are imported on first use, so `import migmcut` (and `migmcut --help`) loads no torch.
`generate`, `record`, `train` and `bench` are also the modules that hold them: calling the module
calls the function of its name, and `migmcut.bench.Configuration` etc. stay reachable.
"""

from __future__ import annotations

import importlib
import types

_API = {"load_recipe": "recipe", "load_base": "base", "load_shortcut": "shortcut", "attach": "attach",
        "generate": "generate", "record": "record", "train": "train", "bench": "bench"}
__all__ = list(_API)


class CallableModule(types.ModuleType):
    """A module that is also its main function: `migmcut.bench(...)` is `migmcut.bench.bench(...)`."""

    def __call__(self, *args, **kwargs):
        from migmcut.errors import check_call

        fn = self.__wrapped__
        check_call(fn, args, kwargs)  # the API's one argument check: a UserError, not a TypeError inside
        return fn(*args, **kwargs)

    @property
    def __wrapped__(self):  # what inspect.signature and help() show
        return getattr(self, self.__name__.rpartition(".")[2])


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'migmcut' has no attribute {name!r}")
    module = importlib.import_module(f"migmcut.{_API[name]}")
    return module if isinstance(module, CallableModule) else getattr(module, name)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
