import pytest

from migmcut.errors import RecipeError
from migmcut.recipe import builtin_names, load_recipe


def test_builtins_load_and_tiny_shapes_is_there():
    assert {"tiny-shapes", "debug"} <= set(builtin_names())
    for name in builtin_names():
        recipe = load_recipe(name)
        assert recipe.name == name
        recipe.sampler.validate()


def test_set_overrides_a_field_and_is_validated():
    recipe = load_recipe("debug", ["sampler.steps=4", "base.weights=random", "sampler.cfg=null"])
    assert recipe.sampler.steps == 4 and recipe.sampler.cfg is None
    assert load_recipe("debug", ["sampler.cfg=2"]).sampler.cfg == 2.0  # ints are fine for floats
    with pytest.raises(RecipeError, match="sampler.steps must be int"):
        load_recipe("debug", ["sampler.steps=many"])
    with pytest.raises(RecipeError, match="unknown key 'sampler.stpes'"):
        load_recipe("debug", ["sampler.stpes=4"])
    with pytest.raises(RecipeError, match="KEY=VALUE"):
        load_recipe("debug", ["sampler.steps"])


def test_unknown_key_is_named_with_the_file(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("name: mine\nbase: {kind: tiny-shapes, weights: random, hiden_size: 8}\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(str(path))
    assert "base.hiden_size" in str(err.value) and str(path) in str(err.value)


def test_wrong_type_malformed_yaml_and_unknown_names(tmp_path):
    bad_type = tmp_path / "t.yaml"
    bad_type.write_text("name: t\nbase: {kind: tiny-shapes}\nsampler: {temperature: hot}\n")
    with pytest.raises(RecipeError, match="sampler.temperature must be float"):
        load_recipe(str(bad_type))
    malformed = tmp_path / "m.yaml"
    malformed.write_text("name: m\nbase: [unclosed\n")
    with pytest.raises(RecipeError, match="malformed YAML"):
        load_recipe(str(malformed))
    with pytest.raises(RecipeError, match="unknown recipe 'nope'"):
        load_recipe("nope")
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(str(tmp_path / "absent.yaml"))
    kind = tmp_path / "k.yaml"
    kind.write_text("name: k\nbase: {kind: stable-diffusion}\n")
    with pytest.raises(RecipeError, match="unknown base.kind"):
        load_recipe(str(kind))


def test_impossible_sampler_values_are_refused(tmp_path):
    with pytest.raises(RecipeError, match="schedule"):
        load_recipe("debug", ["sampler.schedule=zigzag"])
    with pytest.raises(RecipeError, match="steps"):
        load_recipe("debug", ["sampler.steps=0"])


def test_presets_apply_their_overrides_before_set():
    recipe = load_recipe("maskgit-imagenet512", preset="paper-32-8")
    assert (recipe.sampler.steps, recipe.shortcut.budget) == (32, 8)
    assert recipe.sampler.budget_rounding == "half-even"  # the reference's refresh_steps placement
    mine = load_recipe("maskgit-imagenet512", ["shortcut.budget=9"], preset="paper-32-8")
    assert (mine.sampler.steps, mine.shortcut.budget) == (32, 9)  # --set wins
    assert load_recipe("dimoo-t2i", preset="paper-64-9").shortcut.budget == 9
    for name in builtin_names():  # every shipped preset loads
        for preset in load_recipe(name).presets:
            load_recipe(name, preset=preset)


def test_an_unknown_preset_names_the_ones_there_are():
    with pytest.raises(RecipeError, match="no such preset .*paper-15-7, paper-15-8, paper-32-8"):
        load_recipe("maskgit-imagenet512", preset="paper-32-7")
    with pytest.raises(RecipeError, match="its presets: none"):
        load_recipe("debug", preset="paper-32-8")


def test_a_preset_that_is_not_a_list_of_overrides_is_refused(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("name: p\nbase: {kind: tiny-shapes, weights: random}\npresets: {fast: sampler.steps=4}\n")
    with pytest.raises(RecipeError, match="presets.fast must be a list"):
        load_recipe(str(path), preset="fast")
    with pytest.raises(RecipeError, match="presets.fast must be a list"):
        load_recipe(str(path))
