from migmcut.benchmark import default_prompts
from migmcut.recipe import load_recipe
from migmcut.world import prompt_sets, shapes


def test_shipped_sets_are_the_builders_output_held_out_distinct_and_disjoint():
    built = prompt_sets.build_sets()
    sets = {name: prompt_sets.load(name) for name in prompt_sets.NAMES}
    assert sets == built  # the files are what the documented command writes
    bench, selection = sets["bench"], sets["selection"]
    assert len(bench) == len(set(bench)) >= 256 and len(selection) == len(set(selection)) > 0
    assert not set(bench) & set(selection)
    specs = [shapes.parse_caption(c) for c in bench + selection]
    assert all(shapes.is_heldout(s) for s in specs)
    assert len(specs) == len(shapes.split_specs(True))  # the two sets share out the whole held-out split


def test_bench_set_keeps_the_held_out_proportion_of_one_shape_captions():
    held_one, held_all = len(shapes.split_specs(True, 1)), len(shapes.split_specs(True))
    bench = prompt_sets.load("bench")
    one = sum(len(shapes.parse_caption(c).objects) == 1 for c in bench)
    assert one >= 1 and abs(one - len(bench) * held_one / held_all) <= 1


def test_tiny_shapes_bench_defaults_to_the_bench_set():
    recipe = load_recipe("tiny-shapes")
    assert default_prompts(recipe) == prompt_sets.load("bench")
    assert recipe.bench.num_samples >= 384
    selection = load_recipe("tiny-shapes", ["bench.prompts=selection-set"])
    assert default_prompts(selection) == prompt_sets.load("selection")
