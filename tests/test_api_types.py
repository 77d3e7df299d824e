"""Wrong argument types in the Python API are UserErrors naming the parameter, never a raw TypeError:
numbers in `check_range` (every function's numeric parameters), arity and None at the API's entry."""

import pytest

import migmcut
from migmcut.errors import UserError, check_range


@pytest.mark.parametrize("call, words", [
    (lambda r, t: migmcut.generate(r, None), "conditions=None: generate needs a value"),
    (lambda r, t: migmcut.generate(r), "generate(): missing a required argument: 'conditions'"),
    (lambda r, t: migmcut.generate(r, ["a large red circle"], prompts=["x"]), "unexpected keyword argument 'prompts'"),
    (lambda r, t: migmcut.generate(r, ["a large red circle"], method="cache", budget=2.5), "budget=2.5 must be an integer"),
    (lambda r, t: migmcut.generate(r, ["a large red circle"], num_images="2"), "num_images='2' must be a number"),
    (lambda r, t: migmcut.generate(r, ["a large red circle"], steps=True), "steps=True must be a number"),
    (lambda r, t: migmcut.generate(r, ["a large red circle"], seed=None), "seed=None: generate needs a value"),
    (lambda r, t: migmcut.record(r, None), "out=None: record needs a value"),
    (lambda r, t: migmcut.record(r, t / "s", num=None), "num=None: record needs a value"),
    (lambda r, t: migmcut.record(r, t / "s", num=4.0), "num=4.0 must be an integer"),
    (lambda r, t: migmcut.record(r, t / "s", num=4, batch_size=[2]), "batch_size=[2] must be a number"),
    (lambda r, t: migmcut.train(r, t / "s", None), "out=None: train needs a value"),
    (lambda r, t: migmcut.train(r, t / "s", t / "o", max_steps=1.5), "max_steps=1.5 must be an integer"),
    (lambda r, t: migmcut.train(r, t / "s", t / "o", lr="fast"), "lr='fast' must be a number"),
    (lambda r, t: migmcut.bench(r, num_samples=2.0), "num_samples=2.0 must be an integer"),
    (lambda r, t: migmcut.bench(r, repeats="1"), "repeats='1' must be a number"),
    (lambda r, t: migmcut.bench(r, 4), "bench(): too many positional arguments"),
])
def test_a_wrong_type_is_a_user_error_naming_the_parameter(debug_recipe, tmp_path, call, words):
    with pytest.raises(UserError) as err:
        call(debug_recipe, tmp_path)
    assert words in str(err.value), str(err.value)
    assert not (tmp_path / "s").exists() and not (tmp_path / "o").exists()


def test_the_numbers_the_api_takes_still_pass(debug_recipe, debug_base):
    import numpy as np

    check_range("lr", 1e-4, 0, 10, low_open=True, integer=False)
    check_range("budget", np.int64(3), 1, 8)
    check_range("x", 2.5, 0.0, 5.0)
    out = migmcut.generate(debug_recipe, ["a large red circle"], method="cache", budget=np.int64(2), steps=4,
                           base=debug_base)
    assert out.base_calls == 2
