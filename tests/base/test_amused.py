"""aMUSEd adapter: tiny random twins in the Hub layout, the same tokens as diffusers' AmusedPipeline,
features at mlm_layer's input, one-line errors, record -> train -> generate -> bench."""

import dataclasses
import shutil

import pytest
import torch
from pipeline import run_pipeline
from twins import AMUSED_RECIPE, amused_pipeline, amused_twin
from typer.testing import CliRunner

from migmcut.base import load_base
from migmcut.base.amused import COMPONENTS
from migmcut.cli.main import app
from migmcut.errors import UserError
from migmcut.recipe import load_recipe
from migmcut.sampler import sample
from migmcut.shortcut import Shortcut, ShortcutConfig

runner = CliRunner()
RECIPE = AMUSED_RECIPE


@pytest.fixture(scope="module")
def twin(tmp_path_factory):
    return amused_twin(tmp_path_factory.mktemp("amused"))


@pytest.fixture(scope="module")
def base(twin):
    return load_base(load_recipe(RECIPE, twin).base)


def _sets(sets):
    return [a for s in sets for a in ("--set", s)]


@pytest.mark.parametrize("guidance_scale", [10.0, 4.0, 1.0])  # 1: the pipeline runs no unconditional branch
def test_sampler_gives_the_pipelines_tokens(base, guidance_scale):
    """AmusedPipeline(prompt, N, guidance_scale, generator(seed), output_type="latent") == migmcut's
    sample with the recipe's settings, seed s and cfg = guidance_scale - 1 (None when it is <= 1)."""
    pipe, config = amused_pipeline(base), load_recipe(RECIPE).sampler
    cfg = guidance_scale - 1 if guidance_scale > 1 else None
    seen = set()
    for steps in (1, 3, 6, 12):
        for seed in (0, 1, 7):
            ref = pipe("a red fox", num_inference_steps=steps, guidance_scale=guidance_scale,
                       generator=torch.Generator().manual_seed(seed), output_type="latent").images
            ours = sample(base, ["a red fox"], [seed], dataclasses.replace(config, steps=steps, cfg=cfg))
            assert torch.equal(ours.tokens, ref.reshape(1, -1)), (steps, seed)
            seen.add(tuple(ours.tokens[0].tolist()))
    assert len(seen) > 6  # seeds and step counts do give different images


def test_sampler_gives_the_pipelines_tokens_on_a_larger_grid(base):
    """8x8 tokens (16x16 pixels: the micro-conditions carry the size), N = 12, the recipe's CFG."""
    pipe, config = amused_pipeline(base), load_recipe(RECIPE).sampler
    big = load_base(load_recipe(RECIPE, [f"base.model={base.cfg.model}", "base.height=16", "base.width=16"]).base)
    assert big.grid == (8, 8) and big.fingerprint != base.fingerprint  # the size is part of the condition
    for seed in (2, 3):
        ref = pipe("a blue car in snow", height=16, width=16, num_inference_steps=12,
                   generator=torch.Generator().manual_seed(seed), output_type="latent").images
        assert torch.equal(sample(big, ["a blue car in snow"], [seed], config).tokens, ref.reshape(1, -1))


def test_conditions_are_the_pipelines(base):
    cond = base.encode_conditions(["a red fox", "a blue car"])
    P = base.tokenizer.model_max_length
    assert cond["hidden"].shape == (2, P, 8) and cond["pooled"].shape == (2, 8)
    assert cond["micro"].tolist() == [[8.0, 8.0, 0.0, 0.0, 6.0]] * 2
    ids = base.tokenizer(["a red fox", "a blue car"], return_tensors="pt", padding="max_length", truncation=True,
                         max_length=P).input_ids
    out = base.text_encoder(ids, output_hidden_states=True)
    assert torch.equal(cond["hidden"], out.hidden_states[-2]) and torch.equal(cond["pooled"], out.text_embeds)
    null = base.null_conditions(3)
    assert len(null) == 3 and torch.equal(null["hidden"][0], base.encode_prompts([""])["hidden"][0])
    assert base.condition_mask(cond) is None and base.embed_positions(torch.arange(4)) is None
    assert base.embed_conditions(cond).shape == (2, P, base.condition_dim)
    with pytest.raises(UserError, match="--prompt"):
        base.encode_conditions([3])
    with pytest.raises(UserError, match="empty prompt"):
        base.encode_conditions(["  "])


def test_features_are_the_mlm_layer_input_and_head_gives_the_logits(base):
    cond = base.encode_conditions(["a red fox", "a fox in snow"])
    tokens = torch.full((2, 16), base.mask_id)
    tokens[:, 3], tokens[1, 9] = 5, 2
    seen = []
    hook = base.transformer.mlm_layer.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    try:
        logits, features = base(tokens, cond)
    finally:
        hook.remove()
    assert logits.shape == (2, 16, 8) and features.shape == (2, 16, base.feature_dim)
    assert torch.equal(features, seen[0].permute(0, 2, 3, 1).reshape(2, 16, -1))
    assert torch.equal(base.head(features), logits)
    at = torch.tensor([[0, 5, 15], [3, 4, 9]])  # the head at some positions only: pointwise
    part = base.head(features.gather(1, at[..., None].expand(-1, -1, base.feature_dim)))
    torch.testing.assert_close(part, logits.gather(1, at[..., None].expand(-1, -1, 8)))
    # the model's own output, with migmcut's mask id as the scheduler's mask_token_id
    ids = torch.where(tokens == base.mask_id, 31, tokens).view(2, 4, 4)
    own = base.transformer(ids, encoder_hidden_states=cond["hidden"], pooled_text_emb=cond["pooled"],
                           micro_conds=cond["micro"])
    assert base.mask_token_id == 31 and torch.equal(own.permute(0, 2, 3, 1).reshape(2, 16, 8), logits)
    emb = base.embed_tokens(torch.tensor([[1, 2], [5, 7]]))
    conv = base.transformer.embed(torch.tensor([[[1, 2], [5, 7]]])).permute(0, 2, 3, 1)[0]  # (2, 2, D)
    torch.testing.assert_close(emb, conv)
    images = base.decode(torch.randint(0, 8, (2, 16)))
    assert images.shape == (2, 8, 8, 3) and images.dtype.name == "uint8"
    assert base.supports_partial is False


def test_fingerprint_is_stable_and_names_the_weights(twin, base, tmp_path):
    assert load_base(load_recipe(RECIPE, twin).base).fingerprint == base.fingerprint
    other = load_base(load_recipe(RECIPE, amused_twin(tmp_path / "m", seed=1)).base)
    assert other.fingerprint != base.fingerprint


@pytest.mark.parametrize("missing", COMPONENTS)
def test_a_missing_component_folder_is_one_line_exit_2(twin, tmp_path, missing):
    src = dict(s.split("=", 1) for s in twin)["base.model"]
    folder = shutil.copytree(src, tmp_path / "m")
    shutil.rmtree(folder / missing)
    res = runner.invoke(app, ["generate", "--recipe", RECIPE, "--device", "cpu", "--prompt", "a fox",
                              "--set", f"base.model={folder}", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and f"has no {missing}/ folder" in lines[0], res.stderr


def test_unset_weights_and_partial_methods_are_one_line_exit_2(twin, tmp_path):
    res = runner.invoke(app, ["generate", "--recipe", RECIPE, "--device", "cpu", "--prompt", "a fox"])
    assert res.exit_code == 2 and "set base.model" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    res = runner.invoke(app, ["bench", "--recipe", RECIPE, "--device", "cpu", *_sets(twin), "--methods", "vanilla,recap",
                              "--budgets", "3", "--prompts", "recipe", "--out", str(tmp_path / "b")])
    assert res.exit_code == 2, res.output
    assert "no partial evaluation" in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_shortcut_condition_dim_only_where_the_widths_differ(base):
    section = dataclasses.replace(load_recipe(RECIPE).shortcut, heads=2)
    same = ShortcutConfig.from_recipe(section, 8, 8)
    assert same.condition_dim is None and ShortcutConfig.from_recipe(section, 8).condition_dim is None
    keys = set(Shortcut(same).state_dict())
    assert not any(k.startswith("cond_proj") for k in keys)  # checkpoints of same-width bases: unchanged
    wide = Shortcut(ShortcutConfig.from_recipe(section, 8, 12))
    assert set(wide.state_dict()) - keys == {"cond_proj.weight", "cond_proj.bias"}
    h = torch.randn(2, 16, 8)
    new = torch.randn(2, 3, 8)
    out = wide(h, new, torch.ones(2, 3, dtype=torch.bool), torch.tensor([0.5, 0.5]), cond_emb=torch.randn(2, 5, 12))
    assert out.shape == h.shape


def test_amused_record_train_generate_bench_end_to_end(tmp_path):
    """On a twin whose CLIP width (12) is not the feature width (8): the shortcut projects the prompt."""
    import json

    sets = amused_twin(tmp_path / "wide", encoder_hidden_size=12)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red fox\na blue car\n")
    _, rows = run_pipeline(["--recipe", RECIPE, "--device", "cpu", *_sets(sets)], tmp_path,
                           ["--prompt", "a red fox"], ["--prompts", str(prompts)])
    assert rows["shortcut-6/2"]["shortcut_calls"] == 4
    config = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert config["shortcut"]["condition_dim"] == 12 and config["shortcut"]["feature_dim"] == 8
