"""What a bench reads from a trajectory store: the store checked against the recipe (`open_store`),
its validation trajectories (`validation_indices`) and the recorded samples that stand for
vanilla-N (`store_samples`)."""

from __future__ import annotations


import numpy as np
import torch

from migmcut.errors import StoreError, UserError, arg
from migmcut.store.reader import TrajectoryStore


def open_store(url: str, base, recipe, steps: int):
    """The trajectory store at `url`, checked against the recipe's base and sampler at `steps` steps."""
    store = TrajectoryStore(url)
    store.check_base(base, recipe.name)
    if store.steps != steps:
        raise StoreError(f"{arg('store', url)} was recorded with {store.steps} steps, not {steps}: "
                         f"pass {arg('steps', store.steps)}")
    differs = store.sampler_difference(recipe.sampler)
    if differs:
        raise StoreError(f"{arg('store', url)} was recorded with other sampler settings ({differs}): use its recipe")
    if len(store.complete_indices()) == 0:
        raise StoreError(f"{arg('store', url)} has no complete trajectories: run migmcut record first")
    return store


def validation_indices(store, meta: dict, recipe, url) -> np.ndarray:
    """The opened store's validation trajectories: those of the split the shortcut was trained with
    (`meta`: its checkpoint's, when it was trained on a store), else of the recipe's train settings."""
    tmeta = meta.get("train", {}) if meta.get("store") else {}
    _, val_idx = store.split(tmeta.get("val_fraction", recipe.train.val_fraction), seed=tmeta.get("seed", recipe.train.seed))
    if len(val_idx) == 0:
        raise UserError(f"{arg('store', url)}: no validation trajectories (record more)")
    return val_idx


def store_samples(store, indices, base, batch_size: int, device) -> tuple[list, list[int], dict]:
    """(conditions, seeds, {"images": decoded recorded tokens}) of trajectories `indices`: vanilla-N's reference."""
    conditions, seeds, tokens = store.read_samples(indices)
    tokens = torch.from_numpy(tokens).to(device)
    images = np.concatenate([base.decode(tokens[lo : lo + batch_size]) for lo in range(0, len(indices), batch_size)])
    return conditions, seeds, {"images": images}

