"""The Python API: `import migmcut` and the notebook flow, without the CLI."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import migmcut
from migmcut.benchmark.search import search_schedules
from migmcut.cli.common import cli_arg
from migmcut.cli.main import app
from migmcut.errors import CheckpointError, UserError


def test_the_notebook_flow_returns_results(tmp_path):
    recipe = migmcut.load_recipe("debug")
    stored = migmcut.record(recipe, tmp_path / "store", num=6, batch_size=3, block_size=2, device="cpu")
    trained = migmcut.train(recipe, stored.store, tmp_path / "sc", max_steps=3, batch_size=8, device="cpu")
    made = migmcut.generate(recipe, ["a large red circle"], num_images=2, shortcut=trained.out, budget=2, device="cpu")
    run = migmcut.bench(recipe, shortcut=trained.out, budgets=[2], methods=["shortcut"], num_samples=2, repeats=1,
                        out=tmp_path / "bench", device="cpu")

    assert isinstance(stored, migmcut.recording.RecordResult) and (stored.trajectories, stored.written) == (6, 6)
    assert isinstance(trained, migmcut.training.TrainResult) and (trained.steps, trained.start_step) == (3, 0)
    assert {"val_mse", "val_mse_identity"} <= set(trained.validation)
    assert (Path(trained.out) / "shortcut.safetensors").is_file()
    assert isinstance(made, migmcut.generation.Generated) and made.images.dtype == np.uint8 and len(made.images) == 2
    assert (made.method, made.full_steps, made.base_calls, made.shortcut_calls) == ("shortcut", [0, 4], 2, 6)
    assert made.paths == []  # nothing written without `out`
    assert isinstance(run.result, migmcut.benchmark.BenchResult) and run.rollout is None
    labels = [r["label"] for r in run.result.rows]
    assert labels[0] == "vanilla-8" and labels[-1] == "shortcut-8/2"
    assert {Path(p).name for p in run.files.values()} == {"bench.json", "bench.csv", "pareto.png"}

    # the CLI calls the same function: the same seeds give the same images
    res = CliRunner().invoke(app, ["generate", "--recipe", "debug", "--device", "cpu", "--prompt", "a large red circle",
                                   "-n", "2", "--shortcut", trained.out, "--budget", "2", "--out", str(tmp_path / "png")])
    assert res.exit_code == 0, res.output
    written = sorted((tmp_path / "png").glob("*.png"))
    assert np.array_equal(np.stack([np.asarray(Image.open(p)) for p in written]), made.images)


def test_a_library_error_names_the_parameter_and_the_cli_its_flag(debug_recipe, debug_base, tmp_path):
    with pytest.raises(UserError) as err:
        migmcut.generate(debug_recipe, ["a large red circle"], method="cache", budget=99, base=debug_base)
    assert str(err.value) == "budget=99 must be between 1 and the step count (8)"
    assert err.value.params == ["budget"]
    assert err.value.render(cli_arg) == "--budget 99 must be between 1 and the step count (8)"
    res = CliRunner().invoke(app, ["generate", "--recipe", "debug", "--device", "cpu", "--prompt", "a large red circle",
                                   "--method", "cache", "--budget", "99", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and res.stderr.strip() == "error: --budget 99 must be between 1 and the step count (8)"


@pytest.mark.parametrize("call, words", [
    (lambda r, b, t: migmcut.generate(r, ["a large red circle"], method="turbo", base=b), "method='turbo': choose"),
    (lambda r, b, t: migmcut.generate(r, ["a large red circle"], method="cache", steps=0, base=b), "steps must be >= 1"),
    (lambda r, b, t: migmcut.record(r, t / "s", num=0, base=b), "num must be >= 1"),
    (lambda r, b, t: migmcut.record(r, t / "s", num=2, codec="bf16", tolerance=0.1, base=b),
     "tolerance is for codec=delta (this run: codec=bf16)"),
    (lambda r, b, t: migmcut.train(r, t / "s", t / "o", lr=-1.0, base=b), "lr must be > 0"),
    (lambda r, b, t: migmcut.bench(r, budgets="4,x", base=b), "budgets='4,x': expected a list of integers"),
    (lambda r, b, t: search_schedules(r, None, base=b), "a schedule search needs store=STORE"),
    (lambda r, b, t: migmcut.load_recipe("debug", ["sampler.steps"]), "overrides='sampler.steps': expected KEY=VALUE"),
])
def test_library_errors_name_no_flags(debug_recipe, debug_base, tmp_path, call, words):
    with pytest.raises(UserError) as err:
        call(debug_recipe, debug_base, tmp_path)
    assert words in str(err.value) and "--" not in str(err.value), str(err.value)
    assert not (tmp_path / "s").exists() and not (tmp_path / "o").exists()


def test_a_refused_train_out_names_the_switches(debug_recipe, tmp_path):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "old.txt").write_text("")
    with pytest.raises(CheckpointError) as err:
        migmcut.train(debug_recipe, tmp_path / "s", tmp_path / "o", device="cpu")
    assert "pass resume=True to continue it, overwrite=True to replace it" in str(err.value)
    assert "pass --resume to continue it, --overwrite to replace it" in err.value.render(cli_arg)


def test_import_is_light_and_the_api_is_plain_functions():
    code = ("import sys, types, migmcut, migmcut.cli.main; assert 'torch' not in sys.modules, 'torch'; "
            "from migmcut import benchmark as lib; assert lib.Configuration; "
            "assert all(type(getattr(migmcut, n)) is types.FunctionType for n in migmcut.__all__); "
            "import migmcut.generation; assert type(migmcut.generate) is types.FunctionType; "
            "import inspect; assert 'budgets' in inspect.signature(migmcut.bench).parameters")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert set(migmcut.__all__) == {"load_recipe", "load_base", "load_shortcut", "attach", "generate", "record", "train", "bench"}


@pytest.mark.parametrize("kwargs, words", [
    ({"methods": "cache,shortcut"}, "methods='cache,shortcut': expected a list of names"),
    ({"vanilla_steps": "2,4"}, "vanilla_steps='2,4': expected a list of integers"),
    ({"classes": "1"}, "classes='1': expected a list of integers"),
    ({"budgets": []}, "budgets is empty"),
])
def test_the_library_takes_lists_where_the_cli_takes_comma_separated_text(debug_recipe, debug_base, tmp_path, kwargs,
                                                                          words):
    with pytest.raises(UserError) as err:
        migmcut.bench(debug_recipe, base=debug_base, out=tmp_path / "o", **kwargs)
    assert words in str(err.value), str(err.value)
    assert not (tmp_path / "o").exists()
