import pytest
import torch

from migmcut.base import load_base
from migmcut.recipe import load_recipe

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def debug_recipe():
    return load_recipe("debug")


@pytest.fixture(scope="session")
def debug_base(debug_recipe):
    return load_base(debug_recipe.base)
