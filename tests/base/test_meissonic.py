"""Meissonic adapter, exact against the reference code (viiika/Meissonic aeba85e).

Fixtures: tests/fixtures/meissonic/make_meissonic.py wrote two random-weight twins in the published
layout with the reference's own classes (`twin-1024`: the published kind, 2x2 down/upsampling at
1024 px; `twin-16`: none, at 16 px) and ran the reference `Pipeline` on them: every transformer
call's inputs and outputs, and the final tokens under migmcut's per-trajectory random draws.
"""

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from pipeline import run_pipeline
from safetensors.torch import load_file
from typer.testing import CliRunner

from migmcut.base import load_base
from migmcut.cli.main import app
from migmcut.errors import UserError
from migmcut.recipe import load_recipe
from migmcut.sampler import sample

FIXTURES = Path(__file__).parents[1] / "fixtures" / "meissonic"
SAMPLING = json.loads((FIXTURES / "meissonic_sampling.json").read_text())
RECIPE = "meissonic-1024"
TWINS = {"twin-1024": [f"base.model={FIXTURES / 'twin-1024'}"],
         "twin-16": [f"base.model={FIXTURES / 'twin-16'}", "base.height=16", "base.width=16"]}
runner = CliRunner()


@pytest.fixture(scope="module")
def bases():
    return {name: load_base(load_recipe(RECIPE, sets).base) for name, sets in TWINS.items()}


def _sets(sets):
    return [a for s in sets for a in ("--set", s)]


def _cond_first(x):
    """The pipeline's CFG batch is [uncond, cond]; migmcut's [cond, uncond]."""
    return torch.cat([x[len(x) // 2:], x[: len(x) // 2]])


def test_conditions_are_the_pipelines(bases):
    base = bases["twin-1024"]
    t = load_file(FIXTURES / "meissonic_logits.safetensors")
    cond = base.encode_conditions(SAMPLING["logit_prompts"]).cat(base.null_conditions(2))
    assert base.cfg.negative_prompt == SAMPLING["negative_prompt"]  # the recipe's: inference.py's
    torch.testing.assert_close(cond["hidden"], _cond_first(t["encoder_hidden_states"]), atol=1e-6, rtol=0)
    torch.testing.assert_close(cond["pooled"], _cond_first(t["pooled_projections"]), atol=1e-6, rtol=0)
    assert torch.equal(cond["micro"], t["micro_conds"]) and cond["micro"][0].tolist() == [1024, 1024, 0, 0, 6]
    assert torch.equal(base.img_ids, t["img_ids"]) and base.img_ids.shape == (16, 3)  # a (4, 4) grid at 1024 px
    assert base.embed_conditions(cond).shape == (4, 77, base.condition_dim) and base.condition_mask(cond) is None
    with pytest.raises(UserError, match="--prompt"):
        base.encode_conditions([3])
    with pytest.raises(UserError, match="empty prompt"):
        base.encode_conditions([" "])


@pytest.mark.parametrize("step", SAMPLING["logit_steps"])
def test_logits_and_features_are_the_reference_transformers(bases, step):
    base = bases["twin-1024"]
    t = load_file(FIXTURES / "meissonic_logits.safetensors")
    config = dataclasses.replace(load_recipe(RECIPE).sampler, steps=6)
    plain = base.encode_conditions(SAMPLING["logit_prompts"]).cat(base.null_conditions(2))
    cond = config.step_conditions(plain, step)
    assert cond["timestep"].tolist() == [6 - 1 - step] * 4 and t[f"step{step}.timestep"].tolist() == [6 - 1 - step]
    tokens = _cond_first(t[f"step{step}.hidden_states"].reshape(4, -1))
    masked = tokens == SAMPLING["mask_token_id"]
    assert masked.any() and (~masked).any() == (step > 0)  # all masked at step 0, some fixed later
    tokens = torch.where(tokens == SAMPLING["mask_token_id"], base.mask_id, tokens)
    logits, features = base(tokens, cond)
    as_rows = lambda x: _cond_first(x).permute(0, 2, 3, 1).reshape(4, 64, -1)  # noqa: E731
    torch.testing.assert_close(features, as_rows(t[f"step{step}.features"]), atol=1e-5, rtol=0)
    torch.testing.assert_close(logits, as_rows(t[f"step{step}.logits"]), atol=1e-5, rtol=0)
    torch.testing.assert_close(base.head(features), logits)
    other, _ = base(tokens, dataclasses.replace(config, timestep="none").step_conditions(plain, step))
    assert "timestep" not in plain.tensors and not torch.allclose(other, logits, atol=1e-3)  # the timestep matters


@pytest.mark.parametrize("run", SAMPLING["runs"], ids=lambda r: f"{r['twin']}-N{r['steps']}-g{r['guidance_scale']}-"
                         f"s{r['seeds'][0]}" + ("-injected" if r["injected"] else ""))
def test_sampling_equals_the_pipeline_token_for_token(bases, run):
    base = bases[run["twin"]]
    config = load_recipe(RECIPE).sampler
    assert (config.cfg, config.cfg_mix, config.timestep) == (8.0, "difference", "countdown")
    g = run["guidance_scale"]
    config = dataclasses.replace(config, steps=run["steps"], cfg=g - 1 if g > 1 else None)
    assert run["timesteps"] == [run["steps"] - 1 - t for t in range(run["steps"])]
    result = sample(base, run["prompts"], run["seeds"], config)
    assert result.tokens.tolist() == run["tokens"]
    assert result.order.tolist() == run["order"]


def test_features_are_the_mlm_layer_input_and_head_is_pointwise(bases):
    base = bases["twin-16"]
    cond = dataclasses.replace(load_recipe(RECIPE).sampler, steps=4).step_conditions(
        base.encode_conditions(["a red fox", "a blue car"]), 1)
    tokens = torch.full((2, 16), base.mask_id)
    tokens[:, 3], tokens[1, 9] = 5, 2
    seen = []
    hook = base.transformer.mlm_layer.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    try:
        logits, features = base(tokens, cond)
    finally:
        hook.remove()
    assert torch.equal(features, seen[0].permute(0, 2, 3, 1).reshape(2, 16, -1))
    at = torch.tensor([[0, 5, 15], [3, 4, 9]])
    part = base.head(features.gather(1, at[..., None].expand(-1, -1, base.feature_dim)))
    torch.testing.assert_close(part, logits.gather(1, at[..., None].expand(-1, -1, 16)))
    emb = base.embed_tokens(torch.tensor([[1, 2], [5, 7]]))
    conv = base.transformer.embed(torch.tensor([[[1, 2], [5, 7]]])).permute(0, 2, 3, 1)[0]
    torch.testing.assert_close(emb, conv)
    images = base.decode(torch.randint(0, 16, (2, 16)))
    assert images.shape == (2, 16, 16, 3) and images.dtype.name == "uint8"
    assert base.supports_partial is False and base.embed_positions(torch.arange(3)) is None


@pytest.mark.parametrize("missing", ["transformer", "vqvae", "text_encoder", "tokenizer", "scheduler"])
def test_a_missing_component_folder_is_one_line_exit_2(tmp_path, missing):
    folder = shutil.copytree(FIXTURES / "twin-1024", tmp_path / "m")
    shutil.rmtree(folder / missing)
    res = runner.invoke(app, ["generate", "--recipe", RECIPE, "--device", "cpu", "--prompt", "a fox",
                              "--set", f"base.model={folder}", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and f"has no {missing}/ folder" in lines[0], res.stderr


@pytest.mark.parametrize("change, words", [
    ({"guidance_embeds": True}, "guidance_embeds=True (supported: False)"),
    ({"pooled_projection_dim": 8}, "pooled_projection_dim=8 (supported: the inner width 16)"),
    ({"upsample": False}, "downsample=True with upsample=False"),
])
def test_an_unsupported_variant_is_refused_by_name(tmp_path, change, words):
    folder = shutil.copytree(FIXTURES / "twin-1024", tmp_path / "m")
    config = json.loads((folder / "transformer" / "config.json").read_text())
    (folder / "transformer" / "config.json").write_text(json.dumps(config | change))
    res = runner.invoke(app, ["generate", "--recipe", RECIPE, "--device", "cpu", "--prompt", "a fox",
                              "--set", f"base.model={folder}", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2, res.output
    assert words in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr


@pytest.mark.parametrize("sets, words", [
    (["base.height=512", "base.width=512"], "base.height 512: the reference pipeline"),  # downsampling: 1024 only
    ([f"base.model={FIXTURES / 'twin-16'}"], "base.height 1024: the reference pipeline"),  # none: not at 1024
    (["base.text_encoder=/nonexistent"], "base.text_encoder: /nonexistent is not a directory"),
])
def test_sizes_the_pipeline_cannot_run_are_one_line_exit_2(tmp_path, sets, words):
    res = runner.invoke(app, ["generate", "--recipe", RECIPE, "--device", "cpu", "--prompt", "a fox",
                              *_sets(TWINS["twin-1024"] + sets), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2, res.output
    assert words in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_a_separate_text_encoder_directory_replaces_text_encoder(bases, tmp_path):
    """inference.py's laion CLIP-ViT-H-14 in place of text_encoder/: base.text_encoder."""
    folder = shutil.copytree(FIXTURES / "twin-1024", tmp_path / "m")
    shutil.move(folder / "text_encoder", tmp_path / "clip")
    base = load_base(load_recipe(RECIPE, [f"base.model={folder}", f"base.text_encoder={tmp_path / 'clip'}"]).base)
    assert base.fingerprint == bases["twin-1024"].fingerprint


def test_unset_weights_and_partial_methods_are_one_line_exit_2(tmp_path):
    res = runner.invoke(app, ["generate", "--recipe", RECIPE, "--device", "cpu", "--prompt", "a fox"])
    assert res.exit_code == 2 and "set base.model" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    res = runner.invoke(app, ["bench", "--recipe", RECIPE, "--device", "cpu", *_sets(TWINS["twin-16"] + ["sampler.steps=4"]),
                              "--methods", "vanilla,recap", "--budgets", "2", "--prompts", "recipe", "--out", str(tmp_path / "b")])
    assert res.exit_code == 2, res.output
    assert "no partial evaluation" in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_meissonic_record_train_generate_bench_end_to_end(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red fox\na blue car\n")
    sets = TWINS["twin-1024"] + ["sampler.steps=6", "shortcut.heads=2", "generate.prompts=[a red fox, a blue car in the snow]"]
    _, rows = run_pipeline(["--recipe", RECIPE, "--device", "cpu", *_sets(sets)], tmp_path,
                           ["--prompt", "a red fox"], ["--prompts", str(prompts)])
    assert rows["shortcut-6/2"]["shortcut_calls"] == 4
