"""Base-model adapters: one module per MIGM family behind `interface.BaseModel`.

`registry` turns a recipe's `base.kind` into the adapter class: a built-in name, an installed
entry point (group `migmcut.bases`) or `package.module:Class` (docs/adapters.md).
"""

from __future__ import annotations

import torch

from migmcut.base.interface import BaseModel
from migmcut.base.partial import KVCache
from migmcut.base.registry import resolve


def load_base(config, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> BaseModel:
    """Build the base model a recipe's `base` section describes, in `dtype` on `device`.

    Adapters whose checkpoints are large read them straight into `dtype` (no fp32 copy). The model
    libraries' load progress bars and advice are silenced first: a CLI wants neither.
    """
    quiet_libraries()
    return resolve(config.kind).from_config(config, dtype=dtype).to(device=device, dtype=dtype)


def quiet_libraries() -> None:
    """transformers/diffusers print load progress bars and advice; a CLI wants neither."""
    import diffusers  # heavy: only once a base is loaded
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()


__all__ = ["BaseModel", "KVCache", "load_base", "resolve"]
