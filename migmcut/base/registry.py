"""The one place a recipe's `base.kind` becomes an adapter class.

`base.kind` is, in this order:

1. a built-in name (`BUILTIN`: name -> "module:Class", imported on first use);
2. the name of an installed entry point in group `migmcut.bases` (a third-party package declares
   `[project.entry-points."migmcut.bases"] my-base = "my_package.adapter:MyBase"`);
3. `package.module:Class`, imported from the Python path as it stands.

The class must subclass `BaseModel` and carry what the rest of migmcut reads from it: `config_class`
(a dataclass with a `kind` field: the recipe's `base` section, validated strictly) and the
classmethod `from_config(cfg, dtype)`. Anything else is a `RecipeError` of one line.
"""

from __future__ import annotations

import dataclasses
import importlib
import re
from importlib import metadata

from migmcut.base.interface import BaseModel
from migmcut.errors import RecipeError

GROUP = "migmcut.bases"

BUILTIN = {
    "tiny-shapes": "migmcut.base.tiny_shapes:TinyShapesBase",
    "maskgit": "migmcut.base.maskgit:MaskGITBase",
    "dimoo": "migmcut.base.dimoo:DiMOOBase",
    "amused": "migmcut.base.amused:AmusedBase",
    "mmada": "migmcut.base.mmada:MMaDABase",
    "meissonic": "migmcut.base.meissonic:MeissonicBase",
}

_TARGET = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def installed() -> dict[str, str]:
    """Entry points of group `migmcut.bases`: name -> "module:Class" (the first of a repeated name)."""
    out: dict[str, str] = {}
    for ep in metadata.entry_points(group=GROUP):
        out.setdefault(ep.name, ep.value)
    return out


def known_kinds() -> str:
    """The kinds a recipe may name, for messages."""
    eps = ", ".join(sorted(n for n in installed() if n not in BUILTIN)) or "none"
    return f"built-in: {', '.join(BUILTIN)}; installed (entry points, group {GROUP}): {eps}; or package.module:Class"


def resolve(kind) -> type:
    """The adapter class `kind` names (checked); a RecipeError of one line if there is none."""
    if not isinstance(kind, str):
        raise RecipeError(f"base.kind must be a string, got {kind!r} ({known_kinds()})")
    if kind in BUILTIN:
        cls = _load(BUILTIN[kind], f"base.kind {kind!r} (built-in adapter {BUILTIN[kind]})")
    elif ":" in kind:
        if not _TARGET.fullmatch(kind):
            raise RecipeError(f"base.kind {kind!r} is not of the form package.module:Class")
        cls = _load(kind, f"base.kind {kind!r}")
    else:
        eps = [ep for ep in metadata.entry_points(group=GROUP) if ep.name == kind]
        if not eps:
            raise RecipeError(f"unknown base.kind {kind!r} ({known_kinds()})")
        ep = eps[0]
        dist = getattr(ep, "dist", None)
        package = f", package {dist.name} {dist.version}" if dist is not None else ""
        target = f"{ep.module}:{ep.attr}" if ep.attr else ep.module  # ep.value may carry [extras]
        cls = _load(target, f"base.kind {kind!r} (entry point {ep.name} = {ep.value}, group {GROUP}{package})")
    _check(cls, kind)
    return cls


def _load(target: str, what: str):
    module_name, _, attr = target.partition(":")
    try:
        obj = importlib.import_module(module_name)
    except Exception as err:  # an adapter's import may fail in any way: say which and how
        raise RecipeError(f"{what}: module {module_name} does not import: {_one_line(err)}") from None
    for part in attr.split(".") if attr else ():
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise RecipeError(f"{what}: module {module_name} has no attribute {attr!r}") from None
    return obj


def _check(cls, kind: str) -> None:

    name = f"{cls.__module__}.{cls.__qualname__}" if isinstance(cls, type) else repr(cls)
    if not (isinstance(cls, type) and issubclass(cls, BaseModel)):
        raise RecipeError(f"base.kind {kind!r}: {name} is not a subclass of migmcut.base.interface.BaseModel")
    missing = []
    config = getattr(cls, "config_class", None)
    if config is None:
        missing.append("config_class (the dataclass of the recipe's base section)")
    elif not (dataclasses.is_dataclass(config) and isinstance(config, type)
              and "kind" in {f.name for f in dataclasses.fields(config)}):
        missing.append(f"a config_class that is a dataclass with a 'kind' field (it is {config!r})")
    if not callable(getattr(cls, "from_config", None)):
        missing.append("from_config (a classmethod from_config(cfg, dtype) -> the model)")
    if missing:
        raise RecipeError(f"base.kind {kind!r}: the adapter {name} lacks {' and '.join(missing)}")


def _one_line(err: BaseException) -> str:
    return " ".join(f"{type(err).__name__}: {err}".split())


def kind_name(cls: type) -> str:
    """The `base.kind` an adapter class answers to, for messages: its config's default kind, else its name."""
    field = next((f for f in dataclasses.fields(cls.config_class) if f.name == "kind"), None)
    return field.default if field is not None and isinstance(field.default, str) else cls.__name__
