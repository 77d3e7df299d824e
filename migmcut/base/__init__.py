"""Base-model adapters: one module per MIGM family behind `interface.BaseModel`."""

from __future__ import annotations

import torch

from migmcut.base.interface import BaseModel
from migmcut.base.amused import AmusedBase, AmusedConfig
from migmcut.base.dimoo import DiMOOBase, DiMOOConfig
from migmcut.base.maskgit import MaskGITBase, MaskGITConfig
from migmcut.base.partial import KVCache
from migmcut.base.tiny_shapes import TinyShapesBase, TinyShapesConfig

BASE_CONFIGS = {"tiny-shapes": TinyShapesConfig, "maskgit": MaskGITConfig, "dimoo": DiMOOConfig, "amused": AmusedConfig}
BASE_CLASSES = {"tiny-shapes": TinyShapesBase, "maskgit": MaskGITBase, "dimoo": DiMOOBase, "amused": AmusedBase}


def load_base(config, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> BaseModel:
    """Build the base model a recipe's `base` section describes, in `dtype` on `device`.

    Adapters whose checkpoints are large read them straight into `dtype` (no fp32 copy).
    """
    return BASE_CLASSES[config.kind].from_config(config, dtype=dtype).to(device=device, dtype=dtype)


__all__ = ["BaseModel", "KVCache", "load_base", "BASE_CONFIGS"]
