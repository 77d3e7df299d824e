"""Lumina-DiMOO adapter: official LLaDA key layout, tiny random twins through the recipe, CLI end to end."""

import json

import pytest
import torch
from pipeline import run_pipeline
from typer.testing import CliRunner

from migmcut.base import load_base
from migmcut.base.dimoo import KEYMAP, BidirectionalLlama, llama_config, write_random_checkpoint
from migmcut.cli.main import app
from migmcut.errors import UserError
from migmcut.recipe import load_recipe

runner = CliRunner()
RECIPE = "dimoo-t2i"

# LLaDA-8B as Lumina-DiMOO extends it (model/modeling_llada.py, LLaDALlamaBlock; config.json of
# LLaDA-8B): d_model 4096, 32 heads (no GQA), 32 layers, mlp_hidden_size 12288, no biases, no weight
# tying; vocabulary = image offset 126356 + 8192 codes (the reference slices logits at
# vocab_size - 8192).
LLADA = {"d_model": 4096, "n_heads": 32, "n_kv_heads": 32, "n_layers": 32, "mlp_hidden_size": 12288,
         "vocab_size": 134548, "embedding_size": 134548, "rope_theta": 500000.0, "rms_norm_eps": 1e-5,
         "weight_tying": False, "include_bias": False, "block_type": "llama"}


def official_dimoo() -> dict:
    D, M, V = 4096, 12288, 134548
    keys = {"model.transformer.wte.weight": (V, D), "model.transformer.ln_f.weight": (D,),
            "model.transformer.ff_out.weight": (V, D)}
    for n in range(32):
        p = f"model.transformer.blocks.{n}"
        keys |= {f"{p}.attn_norm.weight": (D,), f"{p}.ff_norm.weight": (D,),
                 f"{p}.q_proj.weight": (D, D), f"{p}.k_proj.weight": (D, D), f"{p}.v_proj.weight": (D, D),
                 f"{p}.attn_out.weight": (D, D), f"{p}.ff_proj.weight": (M, D), f"{p}.up_proj.weight": (M, D),
                 f"{p}.ff_out.weight": (D, M)}
    return keys


def test_dimoo_full_size_state_dict_maps_to_the_official_names_and_shapes():
    with torch.device("meta"):
        net = BidirectionalLlama(llama_config(LLADA))
    ours = {KEYMAP.to_official(k): tuple(v.shape) for k, v in net.state_dict().items()}
    assert ours == official_dimoo()
    assert {KEYMAP.to_ours(k) for k in official_dimoo()} == set(net.state_dict())
    params = sum(p.numel() for p in net.parameters())
    assert 8.0e9 < params < 8.2e9, params


@pytest.fixture(scope="module")
def twin(tmp_path_factory):
    sets = write_random_checkpoint(tmp_path_factory.mktemp("dimoo"), words=["a", "red", "fox", "in", "snow"])
    sets |= {"base.height": 8, "base.width": 8, "base.max_prompt_tokens": 32, "sampler.steps": 6,
             "generate.prompts": "[a red fox, a fox in snow]"}
    return [f"{k}={v}" for k, v in sets.items()]


def _sets(twin):
    return [a for s in twin for a in ("--set", s)]


def test_dimoo_twin_loads_through_the_recipe_with_the_reference_layout(twin):
    base = load_base(load_recipe(RECIPE, twin).base).float()
    cfg = base.cfg
    assert base.grid == (4, 4) and base.codebook_size == 16 and base.feature_dim == 32
    assert base.image_offset == base.net.config.vocab_size - 16
    cond = base.encode_conditions(["a red fox", "fox"])
    tokens = torch.full((2, 16), base.mask_id)
    tokens[:, 3] = 5
    ids, keep = base.sequence(tokens, cond)
    tail = ids[0, 32:].tolist()
    assert tail[:2] == [cfg.boa_token_id, cfg.boi_token_id] and tail[-2:] == [cfg.eoi_token_id, cfg.eoa_token_id]
    assert tail.count(cfg.newline_token_id) == 4 and tail[2 + 4] == cfg.newline_token_id
    assert tail[2 + 3] == base.image_offset + 5 and tail.count(cfg.mask_token_id) == 15
    logits, features = base(tokens, cond)
    assert logits.shape == (2, 16, 16) and features.shape == (2, 16, 32)
    torch.testing.assert_close(base.head(features), logits)
    # a padded row computes what the unpadded sequence computes
    k = keep[1]
    alone = base.net(ids[1:, k], None)
    torch.testing.assert_close(base.net(ids, keep)[1:, k], alone, atol=1e-4, rtol=1e-4)
    null = base.null_conditions(2)
    assert not torch.equal(base(tokens, null)[1], features)
    emb = base.embed_conditions(cond)
    assert emb.shape == (2, 32, 32) and emb[1, 0].abs().sum() == 0
    assert base.decode(tokens).shape == (2, 8, 8, 3)
    with pytest.raises(UserError, match="base.max_prompt_tokens"):
        base.encode_conditions(["a " * 40])
    with pytest.raises(UserError, match="--prompt"):
        base.encode_conditions([3])


def test_dimoo_record_train_generate_end_to_end(twin, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red fox\na blue car\n")
    _, rows = run_pipeline(["--recipe", RECIPE, "--device", "cpu", *_sets(twin)], tmp_path,
                           ["--prompt", "a red fox"], ["--prompts", str(prompts)])
    assert rows["shortcut-6/2"]["shortcut_calls"] == 4


def test_dimoo_without_weights_is_one_line_exit_2(tmp_path):
    for extra, message in (([], "set base.model"), (["--set", f"base.model={tmp_path}"], "no vqvae/config.json")):
        res = runner.invoke(app, ["generate", "--recipe", RECIPE, "--device", "cpu", "--prompt", "a fox", *extra])
        assert res.exit_code == 2, res.output
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], res.stderr


def test_dimoo_checkpoint_not_matching_names_the_keys(twin, tmp_path):
    import shutil

    src = next(s.split("=", 1)[1] for s in twin if s.startswith("base.model="))
    broken = tmp_path / "m"
    shutil.copytree(src, broken)
    cfg = json.loads((broken / "config.json").read_text())
    cfg["n_layers"] = 3
    (broken / "config.json").write_text(json.dumps(cfg))
    res = runner.invoke(app, ["generate", "--recipe", RECIPE, "--device", "cpu", "--prompt", "a fox",
                              *_sets(twin), "--set", f"base.model={broken}", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2, res.output
    assert "missing layers.2" in res.stderr and len(res.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("key, words", [
    ("layer_norm_type", "layer_norm_type='default' (LLaDA default: not in config.json) (supported: 'rms')"),
    ("activation_type", "activation_type='swiglu' (LLaDA default"),
    ("block_type", "block_type='sequential' (LLaDA default"),
    ("rope", "rope=False (LLaDA default"),
])
def test_a_llada_config_missing_a_key_reads_llada_default_and_is_refused_by_name(twin, tmp_path, key, words):
    """Missing keys take LLaDA's defaults (Lumina-DiMOO 81344e6 model/configuration_llada.py ModelConfig),
    not the values migmcut supports."""
    import shutil
    from pathlib import Path

    folder = Path(shutil.copytree(dict(s.split("=", 1) for s in twin)["base.model"], tmp_path / "m"))
    config = json.loads((folder / "config.json").read_text())
    del config[key]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="unsupported LLaDA settings") as err:
        load_base(load_recipe(RECIPE, [*twin, f"base.model={folder}"]).base)
    assert words in str(err.value)


def test_llama_config_takes_llada_defaults_for_missing_keys():
    partial = {k: v for k, v in LLADA.items() if k not in ("weight_tying", "rope_theta", "embedding_size")}
    c = llama_config(partial)
    assert c.tie_word_embeddings is True and c.rope_parameters["rope_theta"] == 10000.0 and c.vocab_size == 50304
    assert llama_config(LLADA).tie_word_embeddings is False and llama_config(LLADA).vocab_size == 134548
