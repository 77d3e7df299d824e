"""The shipped tiny-shapes weights: they load, the tokenizer is faithful, the model generates."""

import numpy as np
import pytest
import torch

from migmcut.base import load_base
from migmcut.base.tiny_shapes import BUILTIN_WEIGHTS, tokenize_prompts
from migmcut.errors import UserError
from migmcut.recipe import load_recipe
from migmcut.sampler import sample
from migmcut.world import shapes
from migmcut.world import tokenizer as tok
from migmcut.world.checker import score


@pytest.fixture(scope="module")
def shipped():
    return load_base(load_recipe("tiny-shapes").base)


def test_shipped_weights_are_small_safetensors():
    files = [p for p in BUILTIN_WEIGHTS.rglob("*") if p.is_file()]
    assert {p.suffix for p in files} <= {".safetensors", ".json"}
    assert sum(p.stat().st_size for p in files) <= 40 * 2**20


def test_tokenizer_round_trip_keeps_what_the_checker_reads(shipped):
    rng = np.random.default_rng(7)
    captions, images = zip(*(shapes.sample_scene(rng, shapes.all_specs()) for _ in range(48)))
    images = np.stack(images)
    tokens = tok.encode(shipped.vq, tok.to_tensor(images))
    assert tokens.shape == (48, 256)
    decoded = shipped.decode(tokens)
    assert np.abs(decoded.astype(int) - images).mean() < 8
    assert score(decoded, list(captions))["prompt_accuracy"] >= 0.95


def test_shipped_model_generates_and_has_a_stable_fingerprint(shipped):
    again = load_base(load_recipe("tiny-shapes").base)
    assert again.fingerprint == shipped.fingerprint
    config = load_recipe("tiny-shapes", ["sampler.steps=4"]).sampler
    result = sample(shipped, ["a large red circle"], [0], config)
    image = shipped.decode(result.tokens)
    assert image.shape == (1, 64, 64, 3) and image.dtype == np.uint8
    assert shipped.num_tokens == 256 and shipped.feature_dim == 128
    assert shipped.mlm.config.num_hidden_layers >= 8  # deep rather than wide


def test_prompts_outside_the_vocabulary_are_user_errors():
    with pytest.raises(UserError, match="does not know"):
        tokenize_prompts(["a huge red circle"], 12)
    with pytest.raises(UserError, match="longer than"):
        tokenize_prompts(["a " * 13], 12)
    assert torch.equal(tokenize_prompts(["a red circle"], 4)[0, 3:], torch.zeros(1, dtype=torch.long))


def test_fingerprint_does_not_depend_on_the_load_dtype(debug_recipe):
    fp32 = load_base(debug_recipe.base, "cpu", torch.float32)
    bf16 = load_base(debug_recipe.base, "cpu", torch.bfloat16)
    assert next(bf16.parameters()).dtype == torch.bfloat16
    assert fp32.fingerprint == bf16.fingerprint
    other = load_base(load_recipe("debug", ["base.init_seed=3"]).base)
    assert other.fingerprint != fp32.fingerprint


def test_heldout_evaluation_reports_every_attribute(debug_recipe, tmp_path):
    from migmcut.world.evaluate import evaluate, heldout_prompts

    one = heldout_prompts(12, 1, seed=0)
    assert all(shapes.is_heldout(shapes.parse_caption(p)) for p in one + heldout_prompts(5, 2, seed=0))
    report = evaluate(debug_recipe, num=8, steps=4, batch_size=8, save=str(tmp_path / "sheet"))
    for part in ("one_shape", "two_shape"):
        assert {"prompt_accuracy", "count_accuracy", "color_accuracy", "kind_accuracy", "size_accuracy",
                "fd"} <= set(report[part])
    assert report["one_shape"]["relation_accuracy"] is None
    assert report["two_shape"]["n_two_shape"] == 8
    assert (tmp_path / "sheet-one_shape.png").exists()


def test_shipped_model_draws_held_out_prompts(shipped):
    """The floor of the shipped base (0.91 measured on 256 images), checked on 32 held-out captions."""
    from migmcut.generation import generate
    from migmcut.world.evaluate import heldout_prompts

    prompts = heldout_prompts(32, 1, seed=0)
    out = generate(load_recipe("tiny-shapes"), prompts, steps=16, method="vanilla", base=shipped)
    assert score(out.images, prompts)["prompt_accuracy"] >= 0.7


def test_generate_uses_the_shipped_shortcut_and_its_searched_schedule(tmp_path):
    import json

    from typer.testing import CliRunner

    from migmcut.cli.main import app
    from migmcut.placement import load_schedule
    from migmcut.shortcut import resolve_checkpoint

    checkpoint = resolve_checkpoint(load_recipe("tiny-shapes").shortcut.checkpoint)
    assert checkpoint is not None and (checkpoint / "shortcut.safetensors").is_file()
    res = CliRunner().invoke(app, ["generate", "--prompt", "a large red circle", "--device", "cpu",
                                   "--out", str(tmp_path), "--json"])
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout)
    assert payload["method"] == "shortcut" and payload["steps"] == 16
    assert payload["base_calls"] == 6 and payload["shortcut_calls"] == 10  # the default budget: vanilla-16's quality
    assert payload["full_steps"] == load_schedule(checkpoint, 16, 6) == [0, 2, 3, 5, 7, 10]


def test_fingerprint_does_not_depend_on_where_the_weights_live(shipped, tmp_path):
    """A shortcut trained on one machine pairs with the same base installed anywhere else."""
    import shutil

    from migmcut.base.tiny_shapes import BUILTIN_WEIGHTS

    for part in ("base", "tokenizer"):
        shutil.copytree(BUILTIN_WEIGHTS / part, tmp_path / part)
    moved = load_base(load_recipe("tiny-shapes", [f"base.weights={tmp_path}"]).base)
    assert moved.fingerprint == shipped.fingerprint
