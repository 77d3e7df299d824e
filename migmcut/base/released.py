"""The paper's released shortcuts (Hub repository Kaiwen-Zhu/MIGM-Shortcut: `maskgit-shortcut.pth`,
`dimoo-shortcut.pth`), loaded as they are.

A release is a bare `state_dict` saved with `torch.save`; it is read with `weights_only=True`
(tensors only, never arbitrary pickle) and recognised by its tensor names: each family's network
lives beside its adapter (`FAMILIES`: the base kind it runs on -> "module:Class") and says whether a
state_dict is its own (`matches`) and what network it describes (`from_state`). The network reads
the base's frozen embeddings at call time, so the file's missing buffers (the reference copies the
base's embeddings into them at construction) are never needed.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch

from migmcut.base import registry
from migmcut.base.statedict import load_into, read_tensors
from migmcut.errors import CheckpointError

FAMILIES = {
    "maskgit": "migmcut.base.maskgit_shortcut:MaskGITShortcut",
    "dimoo": "migmcut.base.dimoo_shortcut:DiMOOShortcut",
}
NAMES = {"maskgit": "MaskGIT-Shortcut", "dimoo": "DiMOO-Shortcut"}
SUFFIXES = (".pth", ".pt", ".bin")


def family_class(kind: str) -> type:
    module, _, name = FAMILIES[kind].partition(":")
    return getattr(importlib.import_module(module), name)


def read_state(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a `.pth` state_dict, read with weights_only=True; one line for anything else."""
    if not path.is_file():
        raise CheckpointError(f"{path} is not a file (a released shortcut is one .pth file)")
    state = read_tensors(path)
    if not state:
        raise CheckpointError(f"{path}: an empty state_dict, not a shortcut")
    return {k.removeprefix("module."): v for k, v in state.items()}


def from_config(config: dict) -> torch.nn.Module:
    """The released network a migmcut checkpoint's config.json describes (its `arch`), untrained."""
    for kind in FAMILIES:
        cls = family_class(kind)
        if cls.arch == config.get("arch"):
            return cls.from_config(config)
    raise CheckpointError(f"unknown shortcut architecture {config.get('arch')!r} "
                          f"(known: migmcut's own, {', '.join(family_class(k).arch for k in FAMILIES)})")


def recognise(state: dict) -> str | None:
    """The base kind whose released shortcut `state` is, or None."""
    return next((kind for kind in FAMILIES if family_class(kind).matches(state)), None)


def kind_of(base) -> str | None:
    """The built-in family `base` belongs to (a subclass of its adapter counts)."""
    return next((kind for kind in FAMILIES if isinstance(base, registry.resolve(kind))), None)


def load_released(path: str | Path, base) -> tuple[torch.nn.Module, dict]:
    """The released shortcut at `path` for `base`: its network with the file's weights, and the meta
    a migmcut checkpoint's config.json would hold."""
    path = Path(path).expanduser()
    state = read_state(path)
    kind = recognise(state)
    if kind is None:
        raise CheckpointError(f"{path}: not a released MaskGIT-Shortcut or DiMOO-Shortcut state_dict "
                              f"(first tensors: {', '.join(list(state)[:3])})")
    if base is None:
        raise CheckpointError(f"{path}: a released {NAMES[kind]} needs its base model to load with")
    if kind_of(base) != kind:
        raise CheckpointError(f"{path} is a {NAMES[kind]} checkpoint, for the {kind} base; this recipe's base is "
                              f"{registry.kind_name(type(base))}: use a {kind} recipe (e.g. "
                              f"{'maskgit-imagenet512' if kind == 'maskgit' else 'dimoo-t2i'})")
    cls = family_class(kind)
    net = cls.from_state(state, base, str(path))
    load_into(net, state, f"{path} (a {NAMES[kind]} layout read from its own tensors)")
    meta = {"shortcut": net.config, "released": str(path), "base_fingerprint": base.fingerprint}
    return net.eval().requires_grad_(False), meta
