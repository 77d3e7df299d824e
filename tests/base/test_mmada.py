"""MMaDA adapter, exact against the reference code (Gen-Verse/MMaDA 3cdb870).

Fixtures: tests/fixtures/mmada/make_mmada.py ran the reference's own classes on a random-weight twin
in the published layout (migmcut's `write_random_checkpoint` with the fixture's TWIN): the CFG
batch's image logits and final hidden states, `MAGVITv2.decode_code`, and `t2i_generate`'s tokens
under migmcut's per-trajectory random draws.
"""

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from pipeline import run_pipeline
from safetensors.torch import load_file
from typer.testing import CliRunner

from migmcut.base import load_base
from migmcut.base.dimoo import KEYMAP, BidirectionalLlama, llama_config
from migmcut.base.mmada import write_random_checkpoint
from migmcut.cli.main import app
from migmcut.errors import UserError
from migmcut.recipe import load_recipe
from migmcut.sampler import sample
from migmcut.schedule import tokens_per_step

FIXTURES = Path(__file__).parents[1] / "fixtures" / "mmada"
SAMPLING = json.loads((FIXTURES / "mmada_sampling.json").read_text())
RECIPE = "mmada-t2i"
runner = CliRunner()


@pytest.fixture(scope="module")
def twin(tmp_path_factory):
    sets = write_random_checkpoint(tmp_path_factory.mktemp("mmada"), **SAMPLING["twin"])
    sets = [f"{k}={v}" for k, v in sets.items()] + ["generate.prompts=[a red fox, a blue car in the snow]"]
    base = load_base(load_recipe(RECIPE, sets).base)
    assert base.fingerprint == SAMPLING["base_fingerprint"]  # the twin the reference ran
    return sets, base


def _sets(sets):
    return [a for s in sets for a in ("--set", s)]


def test_logits_and_features_are_the_reference_networks(twin):
    _, base = twin
    t = load_file(FIXTURES / "mmada_logits.safetensors")
    assert base.image_offset == SAMPLING["text_vocabulary"] == 126464
    cond = base.encode_conditions(SAMPLING["prompts"]).cat(base.null_conditions(2))
    tokens = torch.where(t["image"] == 126336, base.mask_id, t["image"]).repeat(2, 1)  # the reference's mask id
    ids, _ = base.sequence(tokens, cond)
    assert torch.equal(ids, t["input_ids"])  # the sequence t2i_gen_prompt builds, padding and all
    logits, features = base(tokens, cond)
    torch.testing.assert_close(features, t["hidden"], atol=1e-5, rtol=0)
    torch.testing.assert_close(logits, t["logits"], atol=1e-5, rtol=0)
    assert logits.std() > 0.5 and not torch.allclose(logits[0], logits[2], atol=1e-2)  # the prompt matters
    torch.testing.assert_close(base.head(features), logits)


def test_decode_is_magvit_decode_code_and_inference_t2i_images(twin):
    _, base = twin
    t = load_file(FIXTURES / "mmada_logits.safetensors")
    with torch.no_grad():
        pixels = base.vq(t["codes"], base.grid)
    torch.testing.assert_close(pixels, t["pixels"], atol=1e-5, rtol=0)
    images = base.decode(t["codes"])
    assert images.dtype == np.uint8 and images.shape == (2, 8, 8, 3)
    assert (images == t["images"].numpy()).all()  # clamp((x + 1) / 2, 0, 1) * 255, truncated as numpy does


@pytest.mark.parametrize("run", SAMPLING["runs"], ids=lambda r: f"N{r['steps']}-g{r['guidance_scale']}-s{r['seeds'][0]}"
                         + ("-injected" if r["injected"] else ""))
def test_sampling_equals_t2i_generate_token_for_token(twin, run):
    sets, base = twin
    config = load_recipe(RECIPE, sets).sampler
    assert (config.cfg, config.r_temp) == (3.5, SAMPLING["temperature"])
    config = dataclasses.replace(config, steps=run["steps"], cfg=run["guidance_scale"] or None)
    result = sample(base, run["prompts"], run["seeds"], config)
    assert result.tokens.tolist() == run["tokens"]
    assert result.order.tolist() == run["order"]  # the same positions fixed at every step
    assert run["calls"] == run["steps"]


@pytest.mark.parametrize("case", SAMPLING["counts"], ids=lambda c: f"L{c['tokens']}-N{c['steps']}")
def test_tokens_per_step_are_t2i_generates_at_the_published_size(case):
    """t2i_generate's mask_len arithmetic (ratio in Python floats, cosine in float32, min/max, and every
    remaining position at the last step) is AmusedScheduler's: the recipe's `schedule: amused`."""
    assert tokens_per_step(case["tokens"], case["steps"], "amused") == case["counts"]
    assert load_recipe(RECIPE).sampler.schedule == "amused"


def test_cumulative_noise_is_t2i_generates_rescaled_temperature():
    config = dataclasses.replace(load_recipe(RECIPE).sampler, steps=15)
    temperature, seen = 1.0, []
    for step in range(15):  # inference_t2i.py's t2i_generate, temperature=1.0
        temperature = temperature * (1.0 - 1.0 * (step + 1) / 15)
        seen.append(temperature)
    assert [config.noise_scale(t) for t in range(15)] == seen and seen[-1] == 0
    assert config.noise_scale(0) == pytest.approx(14 / 15) and config.noise_scale(2) == pytest.approx(14 * 13 * 12 / 15**3)


def test_conditions_are_t2i_gen_prompt(twin):
    _, base = twin
    tok, P = base.tokenizer, base.prompt_length
    cond = base.encode_conditions(["a red fox", "fox"])
    ids, keep = cond["ids"], cond["keep"]
    assert ids.shape == (2, P) == keep.shape and P == SAMPLING["twin"]["max_text_len"] + 1
    words = tok("a red fox")["input_ids"]
    assert ids[0, -len(words) - 3:].tolist() == [126088, tok.bos_token_id, *words, tok.eos_token_id]
    assert (ids[0, : P - len(words) - 3] == 126093).all() and keep[0].sum() == len(words) + 3
    null = base.null_conditions(3)["ids"]
    assert null[0, -3:].tolist() == [126088, tok.bos_token_id, tok.eos_token_id] and len(null) == 3
    long = base.encode_conditions([" ".join(["fox"] * 40)])  # truncated as the reference does, <eos> last
    assert long["keep"].all() and long["ids"][0, -1] == tok.eos_token_id and long["ids"][0, :2].tolist() == [126088, tok.bos_token_id]
    assert base.condition_mask(cond).equal(keep) and base.embed_conditions(cond)[0, 0].abs().sum() == 0
    with pytest.raises(UserError, match="--prompt"):
        base.encode_conditions([3])
    with pytest.raises(UserError, match="empty prompt"):
        base.encode_conditions([" "])


def test_a_tokenizer_without_the_chat_header_tokens_moves_the_codes_up_by_three():
    """UniversalPrompting(use_reserved_token=True) adds <|start_header_id|>, <|end_header_id|>, <|eot_id|>
    when `convert_tokens_to_ids` finds no <|end_header_id|>; t2i_generate then offsets codes by len(tokenizer)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from migmcut.base.mmada import text_vocabulary

    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1, "<s>": 2, "</s>": 3}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", bos_token="<s>", eos_token="</s>")
    assert len(fast) == 4 and text_vocabulary(fast) == 7 and text_vocabulary(fast) == 7  # once only
    assert fast.convert_tokens_to_ids(["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]) == [4, 5, 6]


def test_partial_evaluation_against_the_cache_equals_the_full_forward(twin):
    _, base = twin
    cond = base.encode_conditions(["a red fox", "a blue car in the snow"]).cat(base.null_conditions(2))
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 16, (4, 16), generator=g)
    tokens[torch.rand(4, 16, generator=g) < 0.5] = base.mask_id
    logits, features = base(tokens, cond)
    full_logits, full_features, cache = base.forward_with_cache(tokens, cond)
    torch.testing.assert_close(full_features, features, atol=1e-5, rtol=1e-5)
    positions = torch.stack([torch.randperm(16, generator=g)[:5] for _ in range(4)])
    part_logits, part_features = base.partial_forward(tokens, cond, positions, cache)
    at = positions[..., None]
    torch.testing.assert_close(part_features, features.gather(1, at.expand(-1, -1, 32)), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(part_logits, logits.gather(1, at.expand(-1, -1, 16)), atol=1e-4, rtol=1e-4)
    T = base.prompt_length + 16 + 2
    assert cache.keys[0].shape[2] == T and base.kv_cache_bytes_per_image(torch.float32, 2) * 2 == cache.nbytes


def test_full_size_network_has_the_published_names_and_shapes():
    """LLaDA-8B as MMaDA-8B extends it: 32 layers of 4096, SwiGLU 12288, vocabulary 126464 + 8192."""
    config = {"d_model": 4096, "n_heads": 32, "n_kv_heads": 32, "n_layers": 32, "mlp_hidden_size": 12288,
              "vocab_size": 134656, "embedding_size": 134656, "weight_tying": False, "rope_theta": 500000.0}
    with torch.device("meta"):
        net = BidirectionalLlama(llama_config(config))
    names = {KEYMAP.to_official(k): tuple(v.shape) for k, v in net.state_dict().items()}
    assert names["model.transformer.wte.weight"] == (134656, 4096) == names["model.transformer.ff_out.weight"]
    assert names["model.transformer.blocks.31.ff_proj.weight"] == (12288, 4096) and len(names) == 3 + 32 * 9
    assert 8.0e9 < sum(p.numel() for p in net.parameters()) < 8.2e9


@pytest.mark.parametrize("remove, message", [
    ("mmada/config.json", "has no config.json"), ("mmada/*.safetensors", "no *.safetensors"),
    ("mmada/tokenizer*", "has no tokenizer"), ("magvitv2/pytorch_model.bin", "has no weights"),
    ("magvitv2/config.json", "has no config.json"),
])
def test_a_directory_missing_a_component_is_one_line_exit_2(twin, tmp_path, remove, message):
    sets, _ = twin
    src = Path(dict(s.split("=", 1) for s in sets)["base.model"]).parent
    folder = shutil.copytree(src, tmp_path / "copy")
    for path in folder.glob(remove):
        path.unlink()
    over = [f"base.model={folder / 'mmada'}", f"base.vq_model={folder / 'magvitv2'}"]
    res = runner.invoke(app, ["generate", "--recipe", RECIPE, "--device", "cpu", "--prompt", "a fox",
                              *_sets(sets + over), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], res.stderr


@pytest.mark.parametrize("key, value, words", [
    ("block_type", "sequential", "block_type='sequential' (supported: 'llama')"),
    ("include_qkv_bias", True, "include_qkv_bias=True (supported: False or None)"),
    ("layer_norm_with_affine", False, "layer_norm_with_affine=False"),
])
def test_an_unsupported_variant_is_refused_by_name(twin, tmp_path, key, value, words):
    sets, _ = twin
    src = Path(dict(s.split("=", 1) for s in sets)["base.model"])
    folder = shutil.copytree(src, tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    config[key] = value
    (folder / "config.json").write_text(json.dumps(config))
    res = runner.invoke(app, ["generate", "--recipe", RECIPE, "--device", "cpu", "--prompt", "a fox",
                              *_sets(sets + [f"base.model={folder}"]), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2, res.output
    assert words in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_unset_paths_are_one_line_exit_2():
    res = runner.invoke(app, ["generate", "--recipe", RECIPE, "--device", "cpu", "--prompt", "a fox"])
    assert res.exit_code == 2 and "set base.model" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_mmada_record_train_generate_bench_end_to_end(twin, tmp_path):
    sets, _ = twin
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red fox\na blue car\n")
    _, rows = run_pipeline(["--recipe", RECIPE, "--device", "cpu", *_sets(sets + ["sampler.steps=6", "shortcut.heads=2"])],
                           tmp_path, ["--prompt", "a red fox"], ["--prompts", str(prompts)])
    assert rows["shortcut-6/2"]["shortcut_calls"] == 4
