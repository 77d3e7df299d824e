"""Base-model adapters: one module per MIGM family behind `interface.BaseModel`."""

from __future__ import annotations

import torch

from migmcut.base.interface import BaseModel
from migmcut.base.dimoo import DiMOOBase, DiMOOConfig
from migmcut.base.maskgit import MaskGITBase, MaskGITConfig
from migmcut.base.tiny_shapes import TinyShapesBase, TinyShapesConfig

BASE_CONFIGS = {"tiny-shapes": TinyShapesConfig, "maskgit": MaskGITConfig, "dimoo": DiMOOConfig}
BASE_CLASSES = {"tiny-shapes": TinyShapesBase, "maskgit": MaskGITBase, "dimoo": DiMOOBase}


def load_base(config, device: str | torch.device = "cpu") -> BaseModel:
    """Build the base model a recipe's `base` section describes."""
    return BASE_CLASSES[config.kind].from_config(config).to(device)


__all__ = ["BaseModel", "load_base", "BASE_CONFIGS"]
