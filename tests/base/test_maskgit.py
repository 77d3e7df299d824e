"""MaskGIT adapter: official key layout, tiny random twins through the recipe, CLI end to end."""

import pytest
import torch
from pipeline import run_pipeline
from typer.testing import CliRunner

from migmcut.base import load_base
from migmcut.base.maskgit import MaskGITBase, TamingVQDecoder, write_random_checkpoint
from migmcut.cli.main import app
from migmcut.errors import UserError
from migmcut.recipe import load_recipe

runner = CliRunner()
RECIPE = "maskgit-imagenet512"


def official_maskgit_512() -> dict:
    """Names and shapes of MaskTransformer (MaskGIT-pytorch v1, Network/transformer.py) for the
    ImageNet-512 model: hidden 768, depth 24, heads 16, mlp 3072, 32x32 tokens, 1024 codes, 1000 classes."""
    D, M, L, V = 768, 3072, 32 * 32 + 1, 1024 + 1 + 1000 + 1
    keys = {"tok_emb.weight": (V, D), "pos_emb": (1, L, D), "bias": (L, V)}
    for i in (0, 4):  # first_layer: LayerNorm, Dropout, Linear, GELU, LayerNorm, Dropout, Linear
        keys |= {f"first_layer.{i}.weight": (D,), f"first_layer.{i}.bias": (D,)}
    for i in (2, 6):
        keys |= {f"first_layer.{i}.weight": (D, D), f"first_layer.{i}.bias": (D,)}
    for i in (0, 4):  # last_layer: LayerNorm, Dropout, Linear, GELU, LayerNorm
        keys |= {f"last_layer.{i}.weight": (D,), f"last_layer.{i}.bias": (D,)}
    keys |= {"last_layer.2.weight": (D, D), "last_layer.2.bias": (D,)}
    for n in range(24):
        p = f"transformer.layers.{n}"
        keys |= {
            f"{p}.0.norm.weight": (D,), f"{p}.0.norm.bias": (D,),
            f"{p}.0.fn.mha.in_proj_weight": (3 * D, D), f"{p}.0.fn.mha.in_proj_bias": (3 * D,),
            f"{p}.0.fn.mha.out_proj.weight": (D, D), f"{p}.0.fn.mha.out_proj.bias": (D,),
            f"{p}.1.norm.weight": (D,), f"{p}.1.norm.bias": (D,),
            f"{p}.1.fn.net.0.weight": (M, D), f"{p}.1.fn.net.0.bias": (M,),
            f"{p}.1.fn.net.3.weight": (D, M), f"{p}.1.fn.net.3.bias": (D,),
        }
    return keys


# taming's VQGAN f16 (ch 128, ch_mult 1,1,2,2,4, 2 res blocks, attention at 16, z 256, 1024 codes):
# a sample of the decode-path names and shapes of taming.models.vqgan.VQModel
TAMING_F16 = {"embed_dim": 256, "n_embed": 1024, "ddconfig": {
    "double_z": False, "z_channels": 256, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
    "ch_mult": [1, 1, 2, 2, 4], "num_res_blocks": 2, "attn_resolutions": [16], "dropout": 0.0}}
TAMING_DECODER_SAMPLE = {
    "quantize.embedding.weight": (1024, 256),
    "post_quant_conv.weight": (256, 256, 1, 1),
    "decoder.conv_in.weight": (512, 256, 3, 3),
    "decoder.mid.block_1.norm1.weight": (512,),
    "decoder.mid.attn_1.q.weight": (512, 512, 1, 1),
    "decoder.mid.attn_1.proj_out.bias": (512,),
    "decoder.up.4.block.0.conv1.weight": (512, 512, 3, 3),
    "decoder.up.4.attn.2.k.weight": (512, 512, 1, 1),
    "decoder.up.4.upsample.conv.weight": (512, 512, 3, 3),
    "decoder.up.3.block.0.nin_shortcut.weight": (256, 512, 1, 1),
    "decoder.up.1.block.0.nin_shortcut.weight": (128, 256, 1, 1),
    "decoder.up.0.block.2.conv2.weight": (128, 128, 3, 3),
    "decoder.norm_out.weight": (128,),
    "decoder.conv_out.weight": (3, 128, 3, 3),
}


def test_maskgit_full_size_state_dict_matches_the_official_names_and_shapes():
    cfg = load_recipe(RECIPE).base
    with torch.device("meta"):
        net = MaskGITBase.build_transformer(cfg)
        vq = TamingVQDecoder(TAMING_F16)
    ours = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert ours == official_maskgit_512()
    params = sum(p.numel() for p in net.parameters())
    assert 175e6 < params < 178e6, params  # ~176M (174.2M at 256 px: fewer positions)
    vq_keys = {k: tuple(v.shape) for k, v in vq.state_dict().items()}
    for k, shape in TAMING_DECODER_SAMPLE.items():
        assert vq_keys.get(k) == shape, k
    assert not any(k.startswith("decoder.up.") and ".temb_proj." in k for k in vq_keys)


@pytest.fixture(scope="module")
def twin(tmp_path_factory):
    sets = write_random_checkpoint(tmp_path_factory.mktemp("maskgit"))
    return [f"{k}={v}" for k, v in sets.items()] + ["sampler.steps=6"]


def test_maskgit_twin_loads_through_the_recipe(twin):
    base = load_base(load_recipe(RECIPE, twin).base)
    assert base.grid == (4, 4) and base.codebook_size == 16 and base.mask_id == 16 and base.feature_dim == 32
    cond = base.encode_conditions([3, 7])
    tokens = torch.full((2, 16), base.mask_id)
    tokens[:, :5] = 2
    logits, features = base(tokens, cond)
    assert logits.shape == (2, 16, 16) and features.shape == (2, 16, 32)
    torch.testing.assert_close(base.head(features), logits)
    assert base.embed_conditions(cond).shape == (2, 1, 32)
    assert base.embed_positions(torch.tensor([[0, 15]])).shape == (1, 2, 32)
    null = base.null_conditions(2)
    assert not torch.equal(base(tokens, null)[1], features)
    assert base.decode(tokens).shape == (2, 8, 8, 3)
    with pytest.raises(UserError, match="out of range"):
        base.encode_conditions([10])
    with pytest.raises(UserError, match="--class"):
        base.encode_conditions(["a cat"])
    assert load_base(load_recipe(RECIPE, twin).base).fingerprint == base.fingerprint


def _sets(twin):
    return [a for s in twin for a in ("--set", s)]


def test_maskgit_record_train_generate_end_to_end(twin, tmp_path):
    out, rows = run_pipeline(["--recipe", RECIPE, "--device", "cpu", *_sets(twin)], tmp_path,
                             ["--class", "3"], ["--classes", "3,5"])
    assert len(out["images"]) == 1 and rows["shortcut-6/2"]["base_calls"] == 2


@pytest.mark.parametrize(
    "extra, message",
    [
        ([], "set base.checkpoint"),
        (["--set", "base.checkpoint=/nonexistent/m.pth"], "base.checkpoint: /nonexistent/m.pth"),
    ],
)
def test_maskgit_without_weights_is_one_line_exit_2(extra, message):
    res = runner.invoke(app, ["generate", "--recipe", RECIPE, "--device", "cpu", "--class", "3", *extra])
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], res.stderr


def test_maskgit_checkpoint_not_matching_the_recipe_names_the_keys(twin, tmp_path):
    res = runner.invoke(app, ["generate", "--recipe", RECIPE, "--device", "cpu", "--class", "3",
                              *_sets(twin), "--set", "base.depth=3", "--out", str(tmp_path)])
    assert res.exit_code == 2, res.output
    assert "missing transformer.layers.2" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    res = runner.invoke(app, ["generate", "--recipe", RECIPE, "--device", "cpu", "--class", "12",
                              *_sets(twin), "--out", str(tmp_path)])
    assert res.exit_code == 2 and "out of range" in res.stderr


def test_the_v1_vqgan_layout_loads_as_the_flat_one(twin, tmp_path):
    """Maskgit-pytorch v1 (674ef1d, Trainer/vit.py get_network) reads VQGAN/configs/model.yaml and
    VQGAN/ckpts/last.ckpt; the Hub download is flat. Both give the same base."""
    import shutil
    from pathlib import Path

    flat = Path(dict(s.split("=", 1) for s in twin)["base.vqgan"])
    v1 = tmp_path / "VQGAN"
    (v1 / "configs").mkdir(parents=True), (v1 / "ckpts").mkdir()
    shutil.copy(flat / "model.yaml", v1 / "configs"), shutil.copy(flat / "last.ckpt", v1 / "ckpts")
    base = load_base(load_recipe(RECIPE, [*twin, f"base.vqgan={v1}"]).base)
    assert base.fingerprint == load_base(load_recipe(RECIPE, twin).base).fingerprint
    (v1 / "ckpts" / "last.ckpt").unlink()
    with pytest.raises(UserError, match="no last.ckpt .*ckpts/last.ckpt"):
        load_base(load_recipe(RECIPE, [*twin, f"base.vqgan={v1}"]).base)


def test_an_old_lightning_checkpoint_without_lightning_says_what_to_do(twin, tmp_path):
    """A full-pickle last.ckpt naming classes of a package that is not installed: not 'set trust_pickle' again."""
    import shutil
    import sys
    import types
    from pathlib import Path

    flat = Path(dict(s.split("=", 1) for s in twin)["base.vqgan"])
    folder = tmp_path / "VQGAN"
    shutil.copytree(flat, folder)
    fake = types.ModuleType("lightning_of_2021")
    fake.Callback = type("Callback", (), {"__module__": "lightning_of_2021"})
    sys.modules["lightning_of_2021"] = fake
    try:
        ckpt = torch.load(folder / "last.ckpt", weights_only=True)
        torch.save({**ckpt, "callbacks": fake.Callback()}, folder / "last.ckpt")
    finally:
        del sys.modules["lightning_of_2021"]
    sets = [*twin, f"base.vqgan={folder}", "base.trust_pickle=true"]
    with pytest.raises(UserError) as err:
        load_base(load_recipe(RECIPE, sets).base)
    message = str(err.value)
    assert "'lightning_of_2021', which is not installed: pip install lightning_of_2021" in message
    assert "trust_pickle=true" not in message and "['state_dict']" in message
