"""Where `record` draws each trajectory's condition from: `ConditionSource` and the shared draws.

An adapter names its source in a class attribute (`condition_source = ConditionSource(...)`).
A draw is a function `(recipe, run_seed, indices) -> list of conditions` whose result for index i
depends on (run_seed, i) alone, so what gets recorded does not depend on batch size, process
count or interruptions. `name` is recorded in the store: a different draw is a different store.
This module is light (numpy only) so that adapters can import it without a cycle.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from migmcut.errors import UserError
from migmcut.world import shapes

_CONDITION_STREAM = 0x636F6E64  # keeps condition draws apart from the sampler's streams


@dataclass(frozen=True)
class ConditionSource:
    kind: str  # "prompts" or "labels": the store array that holds them
    name: str  # recorded in the store: a different draw is a different store
    draw: Callable  # (recipe, run_seed, indices) -> list of conditions


def condition_rng(run_seed: int, index: int) -> np.random.Generator:
    """The generator of trajectory `index`'s condition in a run with seed `run_seed`."""
    return np.random.default_rng(np.random.SeedSequence([int(run_seed), int(index), _CONDITION_STREAM]))


def tiny_shapes_prompts(recipe, run_seed: int, indices) -> list[str]:
    """Captions of the training split, half one-shape and half two-shape (as the base was trained)."""

    singles, pairs = _training_split(1), _training_split(2)
    out = []
    for i in indices:
        rng = condition_rng(run_seed, i)
        specs = singles if rng.random() < 0.5 else pairs
        out.append(shapes.caption(specs[rng.integers(len(specs))]))
    return out


@functools.cache
def _training_split(num_objects: int) -> list:

    return shapes.split_specs(False, num_objects)


def uniform_labels(recipe, run_seed: int, indices) -> list[int]:
    """Class-conditional bases: one label per trajectory, uniform over the recipe's classes."""
    n = recipe.base.num_classes
    return [int(condition_rng(run_seed, i).integers(n)) for i in indices]


def recipe_prompts(recipe, run_seed: int, indices) -> list[str]:
    """Text bases without a world of their own: the recipe's prompt list, one drawn per trajectory."""
    prompts = recipe.generate.prompts
    if not prompts:
        raise UserError("recording needs prompts: list them under generate.prompts in the recipe")
    return [prompts[int(condition_rng(run_seed, i).integers(len(prompts)))] for i in indices]
