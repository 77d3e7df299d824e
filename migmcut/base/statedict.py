"""Loading official checkpoint files into our own modules, with errors a user can act on.

- `read_tensors(path, entry=..., trust_pickle=...)`: a `.safetensors` file, or a torch pickle
  (`.pth`/`.ckpt`) read with `weights_only=True` unless the recipe says the file is trusted.
- `load_into(module, tensors, what=...)`: strict load by name and shape; a mismatch is a
  `CheckpointError` naming the first offending keys (missing, unexpected, wrong shape).
- `KeyMap`: renames between an official checkpoint's key names and ours (prefix rules), the
  state-dict-adapter idea: our modules keep their library's names, the map translates.
"""

from __future__ import annotations

import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from migmcut.errors import CheckpointError, UserError

WHERE_FROM = "docs/real-models.md (in the migmcut repository)"  # how to get each real model's weights


def require_path(value: str | None, key: str, what: str, expect: str = "file") -> Path:
    """A weight path from the recipe: set, and existing; else a one-line UserError naming the key."""
    where = f"{WHERE_FROM} says where the files come from"
    if value is None or not str(value).strip():
        raise UserError(f"set {key} to {what} (--set {key}=PATH); {where}")
    path = Path(str(value)).expanduser()
    ok = path.is_dir() if expect == "dir" else path.is_file()
    if not ok:
        kind = "directory" if expect == "dir" else "file"
        raise UserError(f"{key}: {path} is not a {kind}; set it to {what} (--set {key}=PATH); {where}")
    return path


def read_tensors(path: Path, *, entry: str | None = None, trust_pickle: bool = False, key: str = "") -> dict:
    """The tensors of a checkpoint file; `entry` picks a sub-dict of a pickled checkpoint."""
    path = Path(path)
    if path.is_file() and path.stat().st_size == 0:
        raise CheckpointError(f"cannot read {path}: the file is empty (0 bytes), truncated by an interrupted download "
                              "or copy: fetch it again")
    if path.suffix == ".safetensors":

        try:
            return load_file(str(path))
        except SafetensorError as err:
            raise CheckpointError(f"cannot read {path}: {err} (truncated or damaged? fetch it again)") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except ModuleNotFoundError as err:  # full pickle of classes from a package not installed (an old Lightning .ckpt)
        keep = f"{{'{entry}': torch.load(PATH, weights_only=False)['{entry}']}}" if entry else "torch.load(PATH, weights_only=False)"
        raise CheckpointError(
            f"cannot read {path}: it pickles objects of {err.name!r}, which is not installed: pip install {err.name}, "
            f"or where it is installed keep the tensors alone (torch.save({keep}, PATH)) and load without trust_pickle"
        ) from None
    except Exception as err:  # noqa: BLE001 - turned into an actionable message
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip()  # torch's messages carry terminal escapes
        first = text.splitlines()[0] if text else type(err).__name__
        if isinstance(err, EOFError) or "central directory" in first or "PytorchStreamReader" in first:
            raise CheckpointError(f"cannot read {path}: the file is truncated or damaged (incomplete archive): "
                                  "fetch it again") from None
        refused = isinstance(err, pickle.UnpicklingError) and "weights only" in first.lower()  # objects, not tensors
        hint = f" (if you trust this file, --set {key.rsplit('.', 1)[0]}.trust_pickle=true loads it with full pickle)" if key and refused and not trust_pickle else ""
        raise CheckpointError(f"cannot read {path}: {first}{hint}") from None
    if entry is not None:
        if not isinstance(obj, dict) or entry not in obj:
            keys = ", ".join(list(obj)[:8]) if isinstance(obj, dict) else type(obj).__name__
            raise CheckpointError(f"{path} has no '{entry}' entry (found: {keys})")
        obj = obj[entry]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a dict of tensors{f' under {entry!r}' if entry else ''}")
    return obj


def _few(names, n: int = 5) -> str:
    names = sorted(names)
    more = f" (+{len(names) - n} more)" if len(names) > n else ""
    return ", ".join(names[:n]) + more


def check_state(expected: dict[str, tuple], tensors: dict, source: str) -> None:
    """`expected`: name -> shape. Raises CheckpointError on any difference."""
    missing = set(expected) - set(tensors)
    unexpected = set(tensors) - set(expected)
    wrong = [
        f"{k} {tuple(tensors[k].shape)} != {tuple(expected[k])}"
        for k in sorted(set(expected) & set(tensors))
        if tuple(tensors[k].shape) != tuple(expected[k])
    ]
    problems = []
    if missing:
        problems.append(f"missing {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected {_few(unexpected)}")
    if wrong:
        problems.append(f"wrong shape {_few(wrong, 3)}")
    if problems:
        raise CheckpointError(
            f"{source} does not match the recipe's architecture: {'; '.join(problems)} "
            "(check the base.* sizes of the recipe against the checkpoint)"
        )


def load_into(module: torch.nn.Module, tensors: dict, source: str, dtype: torch.dtype | None = None) -> None:
    """Strict load; works on a `meta`-device module too (tensors are assigned, not copied)."""
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    check_state(expected, tensors, source)
    if dtype is not None:
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    module.load_state_dict(tensors, strict=True, assign=True)


@dataclass(frozen=True)
class KeyMap:
    """Ordered regex rules official -> ours; `to_ours` / `to_official` rename whole state dicts."""

    rules: tuple[tuple[str, str], ...]  # (official pattern, our template), with {i}-style groups as \1

    def _apply(self, name: str, reverse: bool) -> str:
        for official, ours in self.rules:
            src, dst = (ours, official) if reverse else (official, ours)
            pattern = "^" + re.escape(src).replace(r"\{i\}", r"(\d+)") + "$"
            m = re.match(pattern, name)
            if m:
                return dst.replace("{i}", m.group(1)) if m.groups() else dst
        raise KeyError(name)

    def to_ours(self, name: str) -> str:
        return self._apply(name, reverse=False)

    def to_official(self, name: str) -> str:
        return self._apply(name, reverse=True)

    def rename_to_ours(self, tensors: dict, source: str) -> dict:
        out, foreign = {}, []
        for k, v in tensors.items():
            try:
                out[self.to_ours(k)] = v
            except KeyError:
                foreign.append(k)
        if foreign:
            raise CheckpointError(f"{source} has keys this adapter does not know: {_few(foreign)}")
        return out


def load_component(name: str, folder: Path, loader):
    """`loader()` of a model directory's component `name` (a Hub-layout subfolder), or one line naming it."""
    try:
        return loader()
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"base.model: cannot load {name}/ from {folder}: {first}") from None
