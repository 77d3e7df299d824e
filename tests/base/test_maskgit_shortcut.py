"""The paper's released MaskGIT-Shortcut runs in migmcut exactly as the reference code runs it.

Fixtures: tests/fixtures/released/make_maskgit.py ran the reference (Kaiwen-Zhu/MIGM-Shortcut at
93349c4): its `MaskGITShortcut` saved as it saves one, its outputs, and `MaskGIT.sample_shortcut` on
a random-weight twin with migmcut's random draws injected.
"""

import argparse
import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file
from twins import MASKGIT_RELEASE, MASKGIT_SAMPLING, RELEASED
from typer.testing import CliRunner

from migmcut.base import load_base
from migmcut.base.maskgit import write_random_checkpoint
from migmcut.base.maskgit_shortcut import MaskGITShortcut
from migmcut.cli.main import app
from migmcut.errors import CheckpointError, UserError
from migmcut.recipe import load_recipe
from migmcut.runner import resolve_run
from migmcut.sampler import sample
from migmcut.shortcut import load_shortcut

FIXTURES = RELEASED
SAMPLING = MASKGIT_SAMPLING
RELEASE = MASKGIT_RELEASE
RECIPE = "maskgit-imagenet512"


def _half_even(steps: int):
    """The MaskGIT recipe's sampler at `steps`, full steps placed as the paper's `eval.sh` runs place them."""
    return dataclasses.replace(load_recipe(RECIPE).sampler, steps=steps, budget_rounding="half-even")


@pytest.fixture(scope="module")
def twin(tmp_path_factory):
    sets = write_random_checkpoint(tmp_path_factory.mktemp("maskgit"), **SAMPLING["twin"])
    sets = [f"{k}={v}" for k, v in sets.items()]
    base = load_base(load_recipe(RECIPE, sets).base)
    assert base.fingerprint == SAMPLING["base_fingerprint"]  # the twin the reference ran
    return sets, base


@pytest.mark.parametrize("name", ["maskgit-shortcut", "maskgit-shortcut-2block"])
def test_released_network_gives_the_reference_features(twin, name):
    _, base = twin
    net, meta = load_shortcut(FIXTURES / f"{name}.pth", base)
    assert isinstance(net, MaskGITShortcut) and meta["released"].endswith(f"{name}.pth")
    t = load_file(FIXTURES / "maskgit_features.safetensors")
    new = base.embed_tokens(t[f"{name}.ids"]) + base.embed_positions(t[f"{name}.positions"])
    with torch.no_grad():
        out = net(t[f"{name}.h"], new, t[f"{name}.mask_ratio"])
    torch.testing.assert_close(out, t[f"{name}.out"], atol=1e-5, rtol=0)
    assert not torch.allclose(out, t[f"{name}.h"], atol=1e-3)  # it moved the features


def test_released_layout_is_read_from_the_tensors(twin):
    _, base = twin
    one, _ = load_shortcut(RELEASE, base)
    two, _ = load_shortcut(FIXTURES / "maskgit-shortcut-2block.pth", base)
    assert (one.config["width"], one.config["n_block"], one.config["heads"]) == (32, 1, 16)
    assert one.config["ratio_embedding"] == (256, round((32 * 256) ** 0.5))
    assert (two.config["width"], two.config["n_block"], two.config["ratio_embedding"]) == (16, 2, None)


@pytest.mark.parametrize("run", SAMPLING["runs"], ids=lambda r: f"N{r['steps']}-B{r['budget']}-s{r['seeds'][0]}")
def test_sampling_equals_the_reference_loop_token_for_token(twin, run):
    sets, base = twin
    recipe = load_recipe(RECIPE, sets + [f"sampler.steps={run['steps']}"])
    assert (recipe.sampler.cfg, recipe.sampler.r_temp, recipe.sampler.temperature) == (
        SAMPLING["cfg_w"], SAMPLING["r_temp"], SAMPLING["sm_temp"])
    method = "vanilla" if run["budget"] is None else "shortcut"
    resolved = resolve_run(base, recipe.sampler, method, budget=run["budget"], shortcut=RELEASE)
    full = resolved.full_steps
    kinds = []
    result = sample(base, SAMPLING["labels"], run["seeds"], recipe.sampler, policy=resolved.policy(),
                    observers=(lambda e: kinds.append(e.kind),))
    assert kinds == run["calls"]  # the reference's refresh_steps: the same steps full and shortcut
    assert [t for t, k in enumerate(kinds) if k == "full"] == full
    assert result.tokens.tolist() == run["tokens"]
    assert result.order.tolist() == run["order"]  # so the same tokens after every step


def test_the_paper_placement_differs_from_migmcut_rounding_where_it_matters():
    """The release places full steps with Python's round (half to even): N=15, B=6 puts one at 2, not 3."""
    from migmcut.placement import budget_schedule

    assert budget_schedule(15, 6, "half-even") == [0, 2, 5, 8, 10, 12]
    assert budget_schedule(15, 6, "half-up") == [0, 3, 5, 8, 10, 13]
    assert load_recipe(RECIPE).sampler.budget_rounding == "half-even"


# -- full size: the release's names and shapes at the paper's settings -----------------------------
def test_full_size_release_loads_with_no_missing_or_unexpected_key():
    """The reference class at the release's settings (hidden 768, 1 block, ratio 2, 16 heads), listed
    by the fixture script on the meta device: migmcut reads the same layout from those tensors."""
    shapes = {k: tuple(v) for k, v in SAMPLING["full_size_state"].items()}
    state = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    base = type("Base", (), {"feature_dim": 768})()
    assert MaskGITShortcut.matches(state)
    with torch.device("meta"):
        net = MaskGITShortcut.from_state(state, base, "maskgit-shortcut.pth")
    assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == shapes
    assert (net.config["width"], net.config["ffn"], net.config["ratio_embedding"]) == (384, 1536, (256, 314))
    assert sum(p.numel() for p in net.parameters()) == 5_081_914  # docs/real-models.md: 5.08M, 1/35 of MaskGIT


# -- bad input -----------------------------------------------------------------------------------
def test_a_released_file_for_another_width_is_refused(twin, tmp_path):
    _, base = twin
    state = torch.load(RELEASE, weights_only=True)
    state = {k: torch.zeros(v.shape[0], 48) if k in ("proj_in.weight", "new_token_proj_in.weight") else v
             for k, v in state.items()}
    torch.save(state, tmp_path / "wide.pth")
    with pytest.raises(CheckpointError, match="48-wide features, but this base's are 64"):
        load_shortcut(tmp_path / "wide.pth", base)


@pytest.mark.parametrize("case, words", [
    ("truncated", "cannot read"),
    ("pickle", "cannot read"),
    ("not a shortcut", "not a released MaskGIT-Shortcut or DiMOO-Shortcut"),
    ("empty", "empty state_dict"),
])
def test_bad_pth_files_are_one_line_naming_the_file(twin, tmp_path, case, words):
    _, base = twin
    path = tmp_path / "x.pth"
    if case == "truncated":
        path.write_bytes(RELEASE.read_bytes()[: RELEASE.stat().st_size // 2])
    elif case == "pickle":
        torch.save({"weights": torch.zeros(2), "args": argparse.Namespace(lr=1e-4)}, path)  # as training scripts save args
    elif case == "not a shortcut":
        torch.save({"encoder.weight": torch.zeros(2, 2)}, path)
    else:
        torch.save({}, path)
    with pytest.raises(CheckpointError, match=words) as err:
        load_shortcut(path, base)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_a_released_shortcut_for_another_family_is_refused_by_name(tmp_path):
    tiny = load_base(load_recipe("debug").base)
    with pytest.raises(CheckpointError, match="MaskGIT-Shortcut checkpoint, for the maskgit base"):
        load_shortcut(RELEASE, tiny)


def test_generate_with_a_released_pth_from_the_command_line(twin, tmp_path):
    sets, _ = twin
    args = ["generate", "--recipe", RECIPE, "--device", "cpu", "--class", "3", "--preset", "paper-15-7",
            "--shortcut", str(RELEASE), "--out", str(tmp_path / "out"), "--json"]
    for s in sets:
        args += ["--set", s]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert (out["method"], out["steps"], out["base_calls"], out["shortcut_calls"]) == ("shortcut", 15, 7, 8)
    bad = CliRunner().invoke(app, ["generate", "--recipe", "debug", "--prompt", "a large red circle", "--budget", "2",
                                   "--shortcut", str(RELEASE), "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "base is tiny-shapes: use a maskgit recipe" in bad.output
    assert not (tmp_path / "bad").exists()  # nothing written


def test_hybrid_refuses_a_released_shortcut(twin):
    _, base = twin
    with pytest.raises(UserError, match="use method shortcut"):
        resolve_run(base, _half_even(8), "hybrid", budget=3, shortcut=RELEASE).policy()


# -- fine-tuning a release on a migmcut store (train --init released.pth) ---------------------------
@pytest.fixture(scope="module")
def store(twin, tmp_path_factory):
    from migmcut.recording import record

    sets, _ = twin
    path = tmp_path_factory.mktemp("released") / "store"
    record(load_recipe(RECIPE, sets + ["sampler.steps=8"]), str(path), num=6, batch_size=3, codec="fp16")
    return path


def test_a_pair_rebuilt_by_the_base_has_the_stored_image_rows(twin, store):
    """The store keeps image rows only; the base recomputes the pair's whole input sequence from its
    token state, whose image rows are the recorded h_t (so the release trains on what it samples from)."""
    from migmcut.shortcut import SequenceInputs
    from migmcut.store.reader import TrajectoryStore, pair_loader

    _, base = twin
    net, _ = load_shortcut(RELEASE, base)
    inputs = SequenceInputs(base, net)
    batch = next(iter(pair_loader(TrajectoryStore(str(store)).pairs(shuffle=True, seed=1), 16)))
    x = inputs(batch)
    assert x["h"].shape == (16, 65, 64) and x["new_mask"] is not None  # pairs of several steps: padded
    torch.testing.assert_close(inputs.image(x["h"]), batch["h"], atol=2e-3, rtol=1e-3)  # fp16 store
    assert (x["new_mask"].sum(1) == (batch["order"] == batch["step"][:, None]).sum(1)).all()


def test_train_init_fine_tunes_a_release_and_the_result_loads_anywhere(twin, store, tmp_path):
    from migmcut.training import train

    sets, base = twin
    recipe = load_recipe(RECIPE, sets + ["sampler.steps=8"])
    result = train(recipe, str(store), tmp_path / "sc", max_steps=6, batch_size=8, init=str(RELEASE), base=base)
    assert result.steps == 6 and result.validation["val_mse"] > 0
    tuned, meta = load_shortcut(tmp_path / "sc", base)  # a migmcut checkpoint of the released architecture
    released, _ = load_shortcut(RELEASE, base)
    assert isinstance(tuned, MaskGITShortcut) and meta["shortcut"]["arch"] == "maskgit-shortcut"
    assert tuned.state_dict().keys() == released.state_dict().keys()
    assert any(not torch.equal(a, b) for a, b in zip(tuned.state_dict().values(), released.state_dict().values()))
    policy = resolve_run(base, _half_even(8), "shortcut", budget=3, shortcut=tmp_path / "sc").policy()
    assert sample(base, [1, 2], [5, 6], recipe.sampler, policy=policy).counts == {"full": 3, "shortcut": 5}
    with pytest.raises(UserError, match="fine-tune a released one"):
        train(recipe, None, tmp_path / "online", max_steps=2, init=str(RELEASE), online=True, base=base)


def test_shortcut_convert_writes_a_migmcut_checkpoint_of_the_release(twin, tmp_path):
    sets, base = twin
    args = ["shortcut", "convert", str(RELEASE), "--recipe", RECIPE, "--out", str(tmp_path / "sc"), "--json"]
    for s in sets:
        args += ["--set", s]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    net, meta = load_shortcut(tmp_path / "sc", base)
    released, _ = load_shortcut(RELEASE, base)
    assert meta["shortcut"]["arch"] == "maskgit-shortcut" and meta["base_fingerprint"] == base.fingerprint
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), released.state_dict().values()))
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 2 and "is not empty" in again.output
    bad_args = ["shortcut", "convert", str(FIXTURES / "maskgit_sampling.json"), "--recipe", RECIPE,
                "--out", str(tmp_path / "x")] + [a for s in sets for a in ("--set", s)]
    bad = CliRunner().invoke(app, bad_args)
    assert bad.exit_code == 2 and "cannot read" in bad.output and not (tmp_path / "x").exists()
