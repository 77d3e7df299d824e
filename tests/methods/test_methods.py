"""Methods are plug-ins: one defined here, in the test file alone, runs through generate, bench and
the CLI, takes its knobs from a recipe section of its name, and is refused like a built-in."""

import dataclasses
import json

import numpy as np
import pytest
from typer.testing import CliRunner

import migmcut
from migmcut import methods
from migmcut.cli.main import app
from migmcut.errors import RecipeError, UserError
from migmcut.methods import Method
from migmcut.methods.shortcut import BudgetPolicy
from migmcut.recipe import load_recipe
from migmcut.runner import resolve_run


@dataclasses.dataclass
class StrideConfig:
    stride: int = 2  # a full base call every `stride` steps

    def validate(self) -> None:
        if self.stride < 1:
            raise ValueError(f"stride must be >= 1, got {self.stride}")


class Strided(Method):
    """The feature cache with full steps every `stride` steps (its own placement; a budget is optional)."""

    name = "strided"
    summary = "a full step every stride steps, the features reused in between"
    knobs = StrideConfig
    budget = "optional"
    own_placement = True
    colour = "tab:olive"

    def full_steps(self, steps, budget, knobs, rounding):
        full = list(range(0, steps, knobs.stride))
        if budget is not None and budget != len(full):
            raise ValueError(f"strided with stride {knobs.stride} makes {len(full)} full steps at {steps} steps, "
                             f"not {budget}")
        return full

    def policy(self, full_steps, *, shortcut, counts, knobs):
        return BudgetPolicy(full_steps)


@pytest.fixture
def strided():
    methods.register(Strided())
    yield
    methods.unregister("strided")


def test_a_method_defined_in_a_test_generates_with_its_recipe_knobs(strided, debug_base):
    recipe = load_recipe("debug", ["strided.stride=3"])
    assert recipe.knobs_for("strided") == StrideConfig(3)
    out = migmcut.generate(recipe, ["a large red circle"], num_images=2, method="strided", base=debug_base)
    assert out.full_steps == [0, 3, 6] and out.base_calls == 3 and out.method == "strided"
    # the same full steps through the built-in cache: the same images, token for token
    same = migmcut.generate(recipe, ["a large red circle"], num_images=2, method="cache", full_steps=[0, 3, 6],
                            base=debug_base)
    assert np.array_equal(out.images, same.images)
    assert migmcut.generate("debug", ["a large red circle"], method="strided", base=debug_base).full_steps == [0, 2, 4, 6]


def test_a_method_defined_in_a_test_runs_in_bench_and_the_cli(strided, debug_base, tmp_path):
    run = migmcut.bench("debug", methods=["vanilla", "strided:4"], steps=8, budgets=[4], num_samples=4,
                        batch_size=4, repeats=1, out=tmp_path / "bench", base=debug_base, metrics=["prompt_accuracy"])
    row = next(r for r in run.result.rows if r["method"] == "strided")
    assert row["full_steps"] == [0, 2, 4, 6] and row["base_calls"] == 4 and row["quality"]["prompt_accuracy"] is not None
    assert (tmp_path / "bench" / "pareto.png").stat().st_size > 0  # its row plotted beside the built-ins

    result = CliRunner().invoke(app, ["generate", "--recipe", "debug", "--prompt", "a large red circle", "--method",
                                      "strided", "--set", "strided.stride=4", "--out", str(tmp_path / "img"), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["full_steps"] == [0, 4]


def test_a_plugged_in_method_is_refused_like_a_built_in(strided, debug_base):
    with pytest.raises(RecipeError, match="strided: stride must be >= 1"):
        load_recipe("debug", ["strided.stride=0"])
    with pytest.raises(RecipeError, match="unknown key 'strided.every'"):
        load_recipe("debug", ["strided.every=2"])
    sampler = dataclasses.replace(load_recipe("debug").sampler, steps=8)
    with pytest.raises(UserError, match="makes 4 full steps at 8 steps, not 3"):
        resolve_run(debug_base, sampler, "strided", budget=3)
    with pytest.raises(ValueError, match="built in"):
        methods.register(type("Shadow", (Strided,), {"name": "cache"})())


def test_an_unknown_method_lists_the_registered_ones(strided, debug_base):
    with pytest.raises(UserError, match="choose one of vanilla, cache, shortcut, recap, mlcache, hybrid, adaptive, adaptive-shortcut, adaptive-combined, strided"):
        migmcut.generate("debug", ["a large red circle"], method="nope", base=debug_base)
    methods.unregister("strided")
    with pytest.raises(RecipeError, match="unknown key 'strided'"):
        load_recipe("debug", ["strided.stride=3"])
