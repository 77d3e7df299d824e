"""On-policy training (`train.online`): the rollouts are what generation does, the targets what the base says."""

import json

import pytest
import torch
from typer.testing import CliRunner

from migmcut.cli.main import app
from migmcut.online import rollout_pairs
from migmcut.methods.shortcut import BudgetPolicy
from migmcut.policies import branch_rows
from migmcut.sampler import sample
from migmcut.placement import load_schedule
from migmcut.shortcut import Shortcut, ShortcutConfig


@pytest.fixture(scope="module")
def shortcut(debug_base):
    torch.manual_seed(0)
    net = Shortcut(ShortcutConfig(feature_dim=debug_base.feature_dim))
    torch.nn.init.normal_(net.out_proj.weight, std=0.05)  # not the identity it starts as
    return net.eval()


def test_rollouts_sample_what_generation_samples_and_target_the_base_at_the_reached_state(debug_recipe, debug_base,
                                                                                         shortcut):
    base, config, full = debug_base, debug_recipe.sampler, [0, 3]
    conditions, seeds = ["a red circle", "a blue square"], [11, 12]
    pairs, tokens = rollout_pairs(base, shortcut, conditions, seeds, config, full)
    plain = sample(base, conditions, seeds, config, policy=BudgetPolicy(full, shortcut))
    assert torch.equal(tokens, plain.tokens)  # on-policy: the very tokens `generate` would draw
    assert [p.step for p in pairs] == [t for t in range(config.steps) if t not in full]

    seen = []

    class Watch(BudgetPolicy):
        def step(self, base, state):
            seen.append((state.t, branch_rows(state).clone(), state.cond))
            return super().step(base, state)

    sample(base, conditions, seeds, config, policy=Watch(full, shortcut))
    states = {t: (rows, cond) for t, rows, cond in seen}
    for p in pairs:
        rows, cond = states[p.step]
        _, exact = base(rows, cond)
        assert torch.allclose(p.target, exact, atol=1e-5)  # the teacher at the shortcut policy's own state
        assert torch.equal(p.mask, rows == base.mask_id)
        if p.step - 1 in full:  # right after a full step the shortcut's input is exact
            _, before = base(*states[p.step - 1])
            assert torch.allclose(p.h, before, atol=1e-5)
        else:  # later, it is the shortcut's own last prediction, not the base's
            _, before = base(*states[p.step - 1])
            assert not torch.allclose(p.h, before, atol=1e-3)


def test_online_training_needs_no_store_and_saves_the_schedules_it_trained_on(tmp_path):
    out = tmp_path / "sc"
    res = CliRunner().invoke(app, ["train", "--recipe", "debug", "--online", "--out", str(out), "--max-steps", "3",
                                   "--batch-size", "4", "--set", "train.online_budgets=[2, 3]", "--json"])
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout.strip().splitlines()[-1])
    assert result["steps"] == 3 and result["online_mse"] > 0 and result["online_mse_identity"] > 0
    meta = json.loads((out / "config.json").read_text())
    assert meta["train"]["online"] and meta["store"] is None
    steps = meta["online_schedules"]
    assert load_schedule(out, 8, 2) == steps["2"] and load_schedule(out, 8, 3) == steps["3"]


def test_online_training_continues_from_an_init_checkpoint(tmp_path, debug_base, shortcut):
    from migmcut.training import save_checkpoint

    init = tmp_path / "init"
    opt = torch.optim.AdamW(shortcut.parameters())
    save_checkpoint(init, shortcut, shortcut, opt, 0, {"base_fingerprint": debug_base.fingerprint})
    out = tmp_path / "sc"
    res = CliRunner().invoke(app, ["train", "--recipe", "debug", "--online", "--init", str(init), "--out", str(out),
                                   "--max-steps", "1", "--batch-size", "2", "--lr", "1e-12"])
    assert res.exit_code == 0, res.output
    from safetensors.torch import load_file

    trained, start = load_file(out / "shortcut.safetensors"), shortcut.state_dict()
    assert all(torch.allclose(trained[k], start[k], atol=1e-6) for k in start)  # a tiny step from the init weights


@pytest.mark.parametrize("args, message", [
    ([], "needs a trajectory store"),
    (["--online", "--set", "train.online_budgets=[8]"], "online_budgets must be below"),
    (["--online", "--init", "/nonexistent/sc"], "is not a shortcut checkpoint"),
])
def test_bad_online_input_is_one_line_and_exit_2(tmp_path, args, message):
    res = CliRunner().invoke(app, ["train", "--recipe", "debug", "--out", str(tmp_path / "sc"), *args])
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output
    assert not (tmp_path / "sc" / "shortcut.safetensors").exists()
