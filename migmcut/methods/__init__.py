"""Sampling methods as plug-ins: what a `--method` name means.

A method is one module here with one `Method` subclass instance: its name, its recipe knobs (a
dataclass: the recipe section named after the method, e.g. `recap:`), whether it needs a shortcut
or a base with partial evaluation, where its full steps go, and the policy it runs (the
`policies.Policy` the sampler calls each step). `BUILTIN` lists the shipped ones; `register` adds
one at run time (a notebook, a test), and an installed package adds one through the entry-point
group `migmcut.methods` (`my-method = "my_package.module:METHOD"`), as `base.kind` does for bases.

    from migmcut.methods import Method, register
    register(MyMethod())     # then: generate(..., method="mine"), bench(..., methods=["mine"])
"""

from __future__ import annotations

import importlib
from importlib import metadata

from migmcut.errors import UserError, arg
from migmcut.placement import budget_schedule

GROUP = "migmcut.methods"

BUILTIN = {
    "vanilla": "migmcut.methods.vanilla:METHOD",
    "cache": "migmcut.methods.cache:METHOD",
    "shortcut": "migmcut.methods.shortcut:METHOD",
    "recap": "migmcut.methods.recap:METHOD",
    "mlcache": "migmcut.methods.mlcache:METHOD",
    "hybrid": "migmcut.methods.hybrid:METHOD",
    "adaptive": "migmcut.methods.adaptive:METHOD",
    "adaptive-shortcut": "migmcut.methods.adaptive_shortcut:METHOD",
    "adaptive-combined": "migmcut.methods.adaptive_combined:METHOD",
}


class Method:
    """What a sampling method declares. Subclass it, set the attributes, define `policy` (and
    `full_steps` where its full steps are not the uniform budget placement)."""

    name: str = ""
    summary: str = ""  # one line: what it does (CLI help, docs)
    knobs: type | None = None  # the recipe section's dataclass (with `validate()`), or None
    needs_shortcut: bool = False
    needs_partial: bool = False  # a base with partial evaluation (`BaseModel.require_partial`)
    budget: str = "required"  # required | optional (the method has a placement of its own) | none (every step)
    searched: bool = False  # full steps may come from a schedule searched for its shortcut (schedules.json)
    own_placement: bool = False  # its full steps follow a rule of its own, not the uniform budget placement
    # decides per sample (adaptive compute): `full_steps` are the steps every sample runs the base, a
    # budget is a cap on base calls per sample, and samples may finish in fewer steps than N
    adaptive: bool = False
    vanilla_family: bool = False  # neither shortcut nor cache (adaptive vanilla): on the bench's vanilla front
    colour: str = "tab:gray"  # bench plots

    def full_steps(self, steps: int, budget: int | None, knobs, rounding: str) -> list[int]:
        """The steps that run the base at N = `steps` (ValueError where it cannot place `budget`)."""
        if budget is None:
            raise ValueError(f"method {self.name} needs a budget (full base steps out of {steps})")
        return budget_schedule(steps, budget, rounding)

    def policy(self, full_steps: list[int], *, shortcut, counts: list[int], knobs):
        """A fresh policy for one sampled batch: the base called at `full_steps`, `shortcut` the
        network (None unless `needs_shortcut`), `counts` the sampler's tokens fixed per step,
        `knobs` the recipe's section (None without `knobs`)."""
        raise NotImplementedError

    def default_knobs(self):
        return self.knobs() if self.knobs is not None else None

    def __repr__(self) -> str:
        return f"<method {self.name}>"


_registered: dict[str, Method] = {}
_loaded: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add `method` under its name (replacing a registered one of that name; a built-in is refused)."""
    if not isinstance(method, Method) or not method.name:
        raise TypeError("register takes a Method instance with a name")
    if method.name in BUILTIN:
        raise ValueError(f"method {method.name!r} is built in")
    _registered[method.name] = method
    _loaded.pop(method.name, None)
    return method


def unregister(name: str) -> None:
    _registered.pop(name, None)
    _loaded.pop(name, None)


def installed() -> dict[str, str]:
    """Entry points of group `migmcut.methods`: name -> "module:ATTR"."""
    out: dict[str, str] = {}
    for ep in metadata.entry_points(group=GROUP):
        out.setdefault(ep.name, ep.value)
    return out


def method_names() -> list[str]:
    """Every method a run may name, built-in first."""
    return list(dict.fromkeys([*BUILTIN, *_registered, *installed()]))


def get_method(name) -> Method:
    """The method `name` names; a UserError of one line listing the others if there is none."""
    if name in _loaded:
        return _loaded[name]
    if name in _registered:
        method = _registered[name]
    else:
        target = BUILTIN.get(name) or (installed().get(name) if isinstance(name, str) else None)
        if target is None:
            raise UserError(f"{arg('method', repr(name))}: choose one of {', '.join(method_names())}")
        module, _, attr = target.partition(":")
        try:
            method = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as err:
            raise UserError(f"method {name!r} ({target}) cannot be loaded: {err}") from None
        if not isinstance(method, Method):
            raise UserError(f"method {name!r} ({target}) is not a migmcut.methods.Method")
    _loaded[name] = method
    return method


def knob_sections() -> dict[str, type]:
    """Method name -> its knobs dataclass, for every method that has knobs (the recipe's sections)."""
    return {n: m.knobs for n in method_names() if (m := get_method(n)).knobs is not None}
