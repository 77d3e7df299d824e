"""A base family from outside the repository: an installed entry point, or package.module:Class.

The adapter package is written into a temporary folder with a `*.dist-info` beside it (what an
install leaves), so `importlib.metadata` finds its entry point once that folder is on the path.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import migmcut
from migmcut.base import registry
from migmcut.cli.main import app
from migmcut.errors import RecipeError
from migmcut.recipe import load_recipe
from migmcut.store import TrajectoryStore

ADAPTER = '''
"""The tiny-shapes model under a name, config, condition draw and metrics of its own."""
from dataclasses import dataclass

from migmcut.base.condition_sources import ConditionSource, recipe_prompts
from migmcut.base.interface import BaseModel
from migmcut.base.tiny_shapes import TinyShapesBase, TinyShapesConfig


@dataclass
class ExtShapesConfig(TinyShapesConfig):
    kind: str = "ext-shapes"
    weights: str = "random"
    style: str = "plain"  # a key of its own


class ExtShapesBase(TinyShapesBase):
    config_class = ExtShapesConfig
    condition_source = ConditionSource("prompts", "ext-shapes/recipe-prompts/v1", recipe_prompts)
    default_metrics = ("prompt_accuracy",)


class NotABase:
    config_class = ExtShapesConfig


class NoConfig(BaseModel):
    pass
'''
ENTRY_POINTS = """\
[migmcut.bases]
ext-shapes = migmcut_ext_shapes.adapter:ExtShapesBase
ext-broken = migmcut_ext_missing.adapter:Base
"""
# the debug recipe's sizes: 2 layers, 32 wide, 8 steps
BASE = "hidden_size: 32\n  num_layers: 2\n  num_heads: 2\n  codebook_size: 64\n  vq_channels: [8, 8, 8]\n  init_seed: 0\n  init_std: 0.5"
RECIPE = """\
name: ext
base:
  kind: {kind}
  {base}
sampler: {{steps: 8, schedule: cosine, temperature: 1.0, r_temp: 4.5, cfg: 2.0, cfg_schedule: linear}}
generate:
  batch_size: 2
  prompts: [a large red circle, a small blue square left of a large green triangle]
shortcut: {{heads: 2}}
train: {{max_steps: 3, batch_size: 8, warmup: 1, val_every: 3, val_pairs: 16, checkpoint_every: 3, buffer: 2, val_fraction: 0.25}}
bench: {{budgets: [2], methods: [shortcut], vanilla_steps: [8], num_samples: 2, batch_size: 2, repeats: 1, warmup: 0, bootstrap: 0, prompts: recipe}}
"""


def recipe_file(folder, kind, base=BASE, name="ext.yaml"):
    path = folder / name
    path.write_text(RECIPE.format(kind=kind, base=base))
    return path


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A folder holding the package `migmcut_ext_shapes` and its installed metadata."""
    root = tmp_path_factory.mktemp("site")
    package = root / "migmcut_ext_shapes"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "adapter.py").write_text(textwrap.dedent(ADAPTER))
    (package / "needs_gpu.py").write_text("raise RuntimeError('no GPU driver found')\n")
    info = root / "migmcut_ext_shapes-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: migmcut-ext-shapes\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    return root


@pytest.fixture
def on_path(site, monkeypatch):
    monkeypatch.syspath_prepend(str(site))
    yield site
    for name in [m for m in sys.modules if m.startswith("migmcut_ext_shapes")]:
        del sys.modules[name]


def start(site, cwd, *args):
    """`python -m migmcut.cli.main ARGS --device cpu` with the adapter's folder on PYTHONPATH, started."""
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "migmcut.cli.main", *args, "--device", "cpu"], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc) -> str:
    """The stdout of a started command, which must exit 0."""
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return out


def cli(site, cwd, *args) -> str:
    return finish(start(site, cwd, *args))


def test_an_installed_entry_point_records_trains_generates_and_benches(site, tmp_path):
    recipe = str(recipe_file(tmp_path, "ext-shapes"))
    cli(site, tmp_path, "record", "--recipe", recipe, "--out", "store", "--num", "6", "--batch-size", "3",
        "--block-size", "2", "--json")
    store = TrajectoryStore(tmp_path / "store")
    assert store.complete().all() and store.num == 6 and store.steps == 8
    assert store.spec.condition_source == "ext-shapes/recipe-prompts/v1"  # the adapter's own draw
    assert store.spec.recipe["base"]["kind"] == "ext-shapes"
    prompts = {"a large red circle", "a small blue square left of a large green triangle"}
    assert {store.read_raw(i).condition for i in range(6)} <= prompts

    cli(site, tmp_path, "train", "--recipe", recipe, "--store", "store", "--out", "sc", "--json")
    assert (tmp_path / "sc" / "shortcut.safetensors").is_file() and (tmp_path / "sc" / "config.json").is_file()

    bench = start(site, tmp_path, "bench", "--recipe", recipe, "--shortcut", "sc", "--out", "bench", "--json")
    try:  # generate meanwhile
        made = json.loads(cli(site, tmp_path, "generate", "--recipe", recipe, "--prompt", "a large red circle",
                              "-n", "2", "--shortcut", "sc", "--budget", "2", "--out", "png", "--json"))
    except BaseException:
        bench.kill()
        bench.communicate()
        raise
    assert (made["method"], made["base_calls"], made["shortcut_calls"]) == ("shortcut", 2, 6)
    assert [Image.open(tmp_path / p).size for p in made["images"]] == [(64, 64)] * 2

    finish(bench)
    rows = json.loads((tmp_path / "bench" / "bench.json").read_text())["rows"]
    assert [r["label"] for r in rows] == ["vanilla-8", "shortcut-8/2"]
    assert all("prompt_accuracy" in r["quality"] and "fd" not in r["quality"] for r in rows)  # its default_metrics


def test_package_module_class_is_the_same_model_as_the_builtin_one(on_path, tmp_path, debug_recipe, debug_base):
    recipe = load_recipe(str(recipe_file(tmp_path, "migmcut_ext_shapes.adapter:ExtShapesBase")))
    assert type(recipe.base).__name__ == "ExtShapesConfig" and recipe.base.style == "plain"
    assert registry.resolve("ext-shapes") is registry.resolve("migmcut_ext_shapes.adapter:ExtShapesBase")
    base = migmcut.load_base(recipe.base)
    assert type(base).__name__ == "ExtShapesBase"
    # the debug recipe's sizes and seed: the same weights, so the same seeds give the same images
    ours = migmcut.generate(recipe, ["a large red circle"], num_images=2, method="vanilla", seed=3, base=base).images
    theirs = migmcut.generate(debug_recipe, ["a large red circle"], num_images=2, method="vanilla", seed=3,
                              base=debug_base).images
    assert np.array_equal(ours, theirs)
    with pytest.raises(RecipeError, match="unknown key 'base.colour'"):  # its config is as strict as a built-in's
        load_recipe(str(recipe_file(tmp_path, "ext-shapes", base="colour: red", name="strict.yaml")))


@pytest.mark.parametrize("kind, words", [
    ("no-such-base", ["unknown base.kind 'no-such-base'", "tiny-shapes, maskgit, dimoo", "ext-broken, ext-shapes"]),
    ("ext-broken", ["entry point ext-broken = migmcut_ext_missing.adapter:Base", "migmcut-ext-shapes 0.1",
                    "ModuleNotFoundError: No module named 'migmcut_ext_missing'"]),
    ("migmcut_ext_nowhere.adapter:Base", ["module migmcut_ext_nowhere.adapter does not import", "ModuleNotFoundError"]),
    ("migmcut_ext_shapes.needs_gpu:Base", ["module migmcut_ext_shapes.needs_gpu does not import",
                                           "RuntimeError: no GPU driver found"]),
    ("migmcut_ext_shapes.adapter:Absent", ["module migmcut_ext_shapes.adapter has no attribute 'Absent'"]),
    ("migmcut_ext_shapes.adapter:NotABase", ["migmcut_ext_shapes.adapter.NotABase is not a subclass of",
                                             "BaseModel"]),
    ("migmcut_ext_shapes.adapter:NoConfig", ["lacks config_class", "and from_config"]),
    ("ext shapes:Base", ["is not of the form package.module:Class"]),
])
def test_a_bad_base_kind_is_one_line_and_exit_2(on_path, tmp_path, kind, words):
    recipe = recipe_file(tmp_path, json.dumps(kind))
    res = CliRunner().invoke(app, ["generate", "--recipe", str(recipe), "--prompt", "a large red circle",
                                   "--out", str(tmp_path / "o")])
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and str(recipe) in lines[0], res.stderr
    assert all(w in lines[0] for w in words), lines[0]
    assert not (tmp_path / "o").exists()
