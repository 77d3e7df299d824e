"""The paper's released DiMOO-Shortcut (`dimoo-shortcut.pth`) runs in migmcut as the reference code runs it.

Fixtures (tests/fixtures/released/, made by make_dimoo.py from Kaiwen-Zhu/MIGM-Shortcut 93349c4 on a tiny
random Lumina-DiMOO twin): the reference's own `MDMShortcut` saved as it saves one, its outputs for fixed
inputs, and its `generate_image_shortcut` / `generate_image` loops run with migmcut's random draws.
"""

import dataclasses
import hashlib
import json
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from migmcut.base import load_base, released
from migmcut.base.dimoo import BidirectionalLlama, llama_config, write_random_checkpoint
from migmcut.base.dimoo_shortcut import DiMOOShortcut
from migmcut.base.maskgit_shortcut import MaskGITShortcut
from migmcut.base.statedict import load_into
from migmcut.cli.main import app
from migmcut.errors import CheckpointError
from migmcut.recipe import load_recipe
from migmcut.runner import resolve_run
from migmcut.sampler import sample
from migmcut.shortcut import load_shortcut

HERE = Path(__file__).parents[1] / "fixtures" / "released"
PTH = HERE / "dimoo-shortcut.pth"
FIX = json.loads((HERE / "dimoo.json").read_text())
FEATURES = load_file(str(HERE / "dimoo-features.safetensors"))
runner = CliRunner()


def twin_digest(net: torch.nn.Module) -> str:  # as make_dimoo.py computes it
    h = hashlib.sha256()
    for k, v in sorted(net.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def twin(tmp_path_factory):
    sets = {**write_random_checkpoint(tmp_path_factory.mktemp("dimoo"), **FIX["twin"]), **FIX["sets"]}
    recipe = load_recipe("dimoo-t2i", [f"{k}={v}" for k, v in sets.items()])
    base = load_base(recipe.base).float()
    assert twin_digest(base.net) == FIX["twin_digest"], "write_random_checkpoint no longer makes the fixtures' twin"
    return recipe, base, sets


@pytest.fixture(scope="module")
def net(twin):
    net, meta = load_shortcut(PTH, twin[1])
    assert meta["shortcut"]["arch"] == "dimoo-shortcut" and not net.training
    return net


def _case(name, base):
    f = {k.split(".", 1)[1]: v for k, v in FEATURES.items() if k.startswith(name + ".")}
    new_pos = f["new_map"].bool().nonzero()[:, 1][None]
    return f, base.net.embed_tokens(f["new_ids"]), new_pos


def test_the_release_is_recognised_by_content_and_read_with_its_layout(twin, net):
    state = torch.load(PTH, weights_only=True)
    assert released.recognise(state) == "dimoo"
    assert set(net.state_dict()) == set(state)
    c = net.config
    assert (c["feature_dim"], c["width"], c["n_block"], c["heads"], c["kv_heads"], c["ffn"]) == (32, 16, 1, 4, 2, 64)
    assert c["ratio_embedding"] == [256, 64] and c["rope_theta"] == 500000.0


@pytest.mark.parametrize("name", ["cond", "uncond"])
def test_same_output_features_as_the_reference(twin, net, name):
    f, emb, new_pos = _case(name, twin[1])
    ours = net(f["h"], emb, new_pos, f["mask_ratio"])
    torch.testing.assert_close(ours, f["out"], atol=1e-5, rtol=0)
    assert (ours - f["h"]).abs().mean() > 0.1  # the network does move the features


def test_a_left_padded_batch_computes_each_row_as_the_reference(twin, net):
    """Both cases in one batch, left-padded with junk rows and junk new tokens: positions counted from
    each row's first real row, padding out of the keys."""
    base = twin[1]
    cases = [_case(n, base) for n in ("cond", "uncond")]
    T = max(f["h"].shape[1] for f, _, _ in cases) + 3
    n = max(e.shape[1] for _, e, _ in cases) + 2
    g = torch.Generator().manual_seed(0)
    h = torch.randn(2, T, 32, generator=g) * 100
    emb = torch.randn(2, n, 32, generator=g) * 100
    pos, mask = torch.zeros(2, T, dtype=torch.long), torch.zeros(2, T, dtype=torch.bool)
    new_pos, new_mask = torch.zeros(2, n, dtype=torch.long), torch.zeros(2, n, dtype=torch.bool)
    for i, (f, e, p) in enumerate(cases):
        t, m = f["h"].shape[1], e.shape[1]
        h[i, T - t:], pos[i, T - t:], mask[i, T - t:] = f["h"][0], torch.arange(t), True
        emb[i, :m], new_pos[i, :m], new_mask[i, :m] = e[0], p[0], True
    ratio = torch.cat([f["mask_ratio"] for f, _, _ in cases])
    out = net(h, emb, new_pos, ratio, pos=pos, mask=mask, new_mask=new_mask)
    for i, (f, _, _) in enumerate(cases):
        torch.testing.assert_close(out[i, T - f["h"].shape[1]:], f["out"][0], atol=1e-5, rtol=0)


def test_advance_builds_the_reference_inputs_on_both_branches(twin, net):
    """The policy's call: the conditional row counts its prompt as new tokens, the unconditional row only
    the image tokens fixed; each row left-padded to max_prompt_tokens."""
    base = twin[1]
    cond = base.encode_conditions([FIX["prompts"][0]]).cat(base.null_conditions(1))
    P, L = base.prompt_length, base.num_tokens
    tokens = torch.full((2, L), base.mask_id)
    new = torch.zeros(2, L, dtype=torch.bool)
    seq = base.partial_sequence(tokens, cond)
    sequence = torch.randn(2, seq.ids.shape[1], 32)
    starts = []
    for i, name in enumerate(("cond", "uncond")):
        f = {k.split(".", 1)[1]: v for k, v in FEATURES.items() if k.startswith(name + ".")}
        prompt_len = f["h"].shape[1] - (seq.ids.shape[1] - P)
        image = f["new_map"][0].bool().nonzero()[:, 0]
        image = image[image >= prompt_len]  # rows of the image segment in the unpadded sequence
        grid = torch.tensor([(base.image_index == r - prompt_len).nonzero()[0, 0] for r in image.tolist()])
        new[i, grid] = True
        tokens[i, grid] = f["new_ids"][0, -len(image):] - base.image_offset
        sequence[i, P - prompt_len:] = f["h"][0]
        starts.append(P - prompt_len)
    assert float(FEATURES["cond.mask_ratio"]) == float(FEATURES["uncond.mask_ratio"])
    out = net.advance(base, sequence, tokens, cond, new, float(FEATURES["cond.mask_ratio"]))
    for i, name in enumerate(("cond", "uncond")):
        torch.testing.assert_close(out[i, starts[i]:], FEATURES[f"{name}.out"][0], atol=1e-5, rtol=0)


RUNS = {f"N{r['steps']}-B{r['budget'] or 'vanilla'}": r for r in FIX["runs"]}


@pytest.mark.parametrize("key", list(RUNS))
def test_sampling_equals_the_reference_loop_token_for_token(twin, key):
    """migmcut's sampler, with the policy generate builds from the .pth, against the reference's loop run
    with the same random draws: the tokens after every step, the full steps, and on every shortcut step
    both CFG branches' new-token counts."""
    recipe, base, _ = twin
    run = RUNS[key]
    steps, budget = run["steps"], run["budget"]
    prompts = [FIX["prompts"][p] for p, _ in FIX["rows"]]
    seeds = [s for _, s in FIX["rows"]]
    config = dataclasses.replace(recipe.sampler, steps=steps)
    assert (config.cfg, config.temperature, config.r_temp) == (FIX["cfg"], FIX["temperature"], FIX["temperature"])
    method = "vanilla" if budget is None else "shortcut"
    resolved = resolve_run(base, config, method, budget=budget, shortcut=None if budget is None else PTH)
    full, policy = resolved.full_steps, resolved.policy()
    counts = []
    if budget is not None:
        def spy(module, args, kwargs):
            m = kwargs.get("new_mask")
            counts.append(m.sum(1).tolist() if m is not None else [args[1].shape[1]] * args[1].shape[0])
        policy.shortcut.register_forward_pre_hook(spy, with_kwargs=True)
    seen = []
    sample(base, prompts, seeds, config, policy=policy,
           observers=(lambda e: seen.append((e.kind, e.tokens.clone())),))
    B = len(prompts)
    assert [k for k, _ in seen] == ["full" if t in full else "shortcut" for t in range(steps)]
    for i, row in enumerate(run["rows"]):
        assert full == row["full_steps"]
        for t, expected in enumerate(row["tokens"]):
            assert seen[t][1][i].tolist() == expected, f"row {i} (prompt {FIX['rows'][i]}), step {t}"
        assert [[c[i], c[B + i]] for c in counts] == row["new_tokens"]
    if budget is not None:  # the conditional rows' counts include the whole prompt template
        assert all(c[0] - c[B] == run["rows"][0]["prompt_tokens"] for c in counts)


def test_full_size_release_layout_loads_with_no_missing_or_unexpected_key():
    """The reference's MDMShortcut at the paper's settings (LLaDA-8B as Lumina-DiMOO extends it, on the
    meta device in make_dimoo.py): migmcut's module has exactly its names and shapes."""
    full = FIX["full_size"]
    with torch.device("meta"):
        state = {k: torch.empty(s) for k, s in full["state_dict"].items()}
        llada = BidirectionalLlama(llama_config({**full["llada"], "n_layers": 1}))
    assert released.recognise(state) == "dimoo"
    base = types.SimpleNamespace(feature_dim=4096, net=llada)
    with torch.device("meta"):
        net = DiMOOShortcut.from_state(state, base, "dimoo-shortcut.pth")
    assert {k: list(v.shape) for k, v in net.state_dict().items()} == full["state_dict"]
    load_into(net, state, "dimoo-shortcut.pth")
    params = sum(p.numel() for p in net.parameters())
    assert params == full["parameters"]
    assert 215e6 < params < 225e6, params  # ~220M, 2.7% of the 8.08B base (DESIGN.md)
    c = net.config
    assert (c["width"], c["heads"], c["kv_heads"], c["ffn"], c["ratio_embedding"]) == (2048, 32, 32, 12288, [256, 724])


# -- bad input ---------------------------------------------------------------------------------------------
def _maskgit_release(path: Path) -> Path:
    torch.save(MaskGITShortcut(32, 16).state_dict(), path)
    return path


def _other_width(path: Path) -> Path:
    net = DiMOOShortcut(48, 24, heads=4, kv_heads=2, ffn=64, rope_theta=500000.0, eps=1e-5)
    torch.save(net.state_dict(), path)
    return path


def _truncated(path: Path) -> Path:
    path.write_bytes(PTH.read_bytes()[: PTH.stat().st_size // 2])
    return path


def _pickled(path: Path) -> Path:
    torch.save({"state_dict": torch.load(PTH, weights_only=True), "args": types.SimpleNamespace(budget=11)}, path)
    return path


def _not_a_shortcut(path: Path) -> Path:
    torch.save({"weight": torch.zeros(3)}, path)
    return path


BAD = [
    (_maskgit_release, "is a MaskGIT-Shortcut checkpoint"),
    (_other_width, "a DiMOO-Shortcut for 48-wide features, but this base's are 32 wide"),
    (_truncated, "cannot read"),
    (_pickled, "cannot read"),
    (_not_a_shortcut, "not a released MaskGIT-Shortcut or DiMOO-Shortcut"),
]


@pytest.mark.parametrize("make, message", BAD, ids=[m.__name__.strip("_") for m, _ in BAD])
def test_a_bad_release_for_the_dimoo_recipe_is_one_line_exit_2_and_writes_nothing(twin, tmp_path, make, message):
    path = make(tmp_path / "x.pth")
    out = tmp_path / "out"
    sets = [a for k, v in twin[2].items() for a in ("--set", f"{k}={v}")]
    res = runner.invoke(app, ["generate", "--recipe", "dimoo-t2i", *sets, "--device", "cpu", "--prompt", "a red fox",
                              "--steps", "8", "--budget", "3", "--shortcut", str(path), "--out", str(out)])
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and str(path) in lines[0], res.stderr
    assert res.stdout == "" and (not out.exists() or not any(out.iterdir()))


def test_the_dimoo_release_given_to_a_maskgit_base_is_refused(tmp_path):
    from migmcut.base.maskgit import write_random_checkpoint as maskgit_twin

    sets = maskgit_twin(tmp_path / "maskgit")
    base = load_base(load_recipe("maskgit-imagenet512", [f"{k}={v}" for k, v in sets.items()]).base)
    with pytest.raises(CheckpointError, match="is a DiMOO-Shortcut checkpoint, for the dimoo base; this recipe's "
                                              "base is maskgit: use a dimoo recipe"):
        load_shortcut(PTH, base)
    out = tmp_path / "out"
    args = [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    res = runner.invoke(app, ["generate", "--recipe", "maskgit-imagenet512", *args, "--device", "cpu", "--class", "1",
                              "--steps", "8", "--budget", "3", "--shortcut", str(PTH), "--out", str(out)])
    assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1 and "DiMOO-Shortcut" in res.stderr
    assert not out.exists() or not any(out.iterdir())


def test_train_init_fine_tunes_the_release_on_a_store(twin, tmp_path):
    """A store keeps image rows only: the base rebuilds each pair's sequence (prompt rows included) from
    its token state, whose image rows are the recorded h_t; the result loads as the released architecture."""
    from migmcut.recording import record
    from migmcut.shortcut import SequenceInputs
    from migmcut.store.reader import TrajectoryStore, pair_loader
    from migmcut.training import train

    recipe, base, _ = twin
    recipe = dataclasses.replace(recipe, sampler=dataclasses.replace(recipe.sampler, steps=6),
                                 generate=dataclasses.replace(recipe.generate, prompts=FIX["prompts"]))
    record(recipe, str(tmp_path / "store"), num=4, batch_size=2, codec="fp16", base=base)
    released_net, _ = load_shortcut(PTH, base)
    inputs = SequenceInputs(base, released_net)
    batch = next(iter(pair_loader(TrajectoryStore(str(tmp_path / "store")).pairs(shuffle=True, seed=1), 12)))
    x = inputs(batch)
    torch.testing.assert_close(inputs.image(x["h"]), batch["h"], atol=2e-3, rtol=1e-3)  # an fp16 store
    result = train(recipe, str(tmp_path / "store"), tmp_path / "sc", max_steps=3, batch_size=6, init=str(PTH),
                   base=base)
    assert result.steps == 3 and result.validation["val_mse"] > 0
    tuned, meta = load_shortcut(tmp_path / "sc", base)
    assert isinstance(tuned, DiMOOShortcut) and meta["shortcut"]["arch"] == "dimoo-shortcut"
    assert any(not torch.equal(a, b) for a, b in zip(tuned.state_dict().values(), released_net.state_dict().values()))
    config = dataclasses.replace(recipe.sampler, steps=6, budget_rounding="half-even")
    policy = resolve_run(base, config, "shortcut", budget=2, shortcut=tmp_path / "sc").policy()
    assert sample(base, FIX["prompts"][:1], [3], recipe.sampler, policy=policy).counts == {"full": 2, "shortcut": 4}
