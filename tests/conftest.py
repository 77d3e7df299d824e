import pytest
import torch

from migmcut.base import load_base
from migmcut.recipe import load_recipe

torch.set_num_threads(1)  # the test models are tiny: one thread is as fast and never oversubscribes


@pytest.fixture(scope="session")
def debug_recipe():
    return load_recipe("debug")


@pytest.fixture(scope="session")
def debug_base(debug_recipe):
    return load_base(debug_recipe.base)
