"""Adaptive compute (issue 31): adaptive tokens per step on ragged rows, adaptive full steps with the
shortcut on sub-batches, per-sample counts, and their refusals."""

import json

import pytest
import torch
from typer.testing import CliRunner

import migmcut
from migmcut.cli.main import app
from migmcut.errors import RecipeError, UserError
from migmcut.methods.adaptive import AdaptiveConfig, AdaptiveTokens
from migmcut.methods.adaptive_combined import AdaptiveCombinedConfig
from migmcut.methods.adaptive_shortcut import AdaptiveShortcutConfig, AdaptiveStepPolicy
from migmcut.methods.shortcut import new_token_inputs
from migmcut.policies import FullPolicy
from migmcut.recipe import load_recipe
from migmcut.runner import resolve_run
from migmcut.sampler import StepState, sample
from migmcut.shortcut import Shortcut, ShortcutConfig, ShortcutInputs

PROMPTS = ["a large red circle", "a small blue square left of a large green triangle", "a small green circle",
           "a large purple square above a small yellow circle"]
SEEDS = [5, 6, 7, 8]


@pytest.fixture(scope="module")
def net(debug_base):
    torch.manual_seed(0)
    shortcut = Shortcut(ShortcutConfig(feature_dim=debug_base.feature_dim, heads=2)).eval()
    for p in shortcut.out_proj.parameters():  # an untrained shortcut is the identity: make it move
        torch.nn.init.normal_(p, std=0.05)
    return shortcut


@pytest.fixture(scope="module")
def checkpoint(net, debug_base, tmp_path_factory):
    path = tmp_path_factory.mktemp("adaptive") / "ck"
    net.save(path, {"base_fingerprint": debug_base.fingerprint})
    return path


def run(base, config, policy, prompts=PROMPTS, seeds=SEEDS):
    return sample(base, prompts, list(seeds), config, policy=policy)


def test_thresholds_off_sample_what_the_fixed_sampler_does(debug_base, debug_recipe, net):
    config = debug_recipe.sampler
    fixed, off = run(debug_base, config, FullPolicy()), run(debug_base, config, AdaptiveTokens(1.5))
    assert torch.equal(fixed.tokens, off.tokens) and torch.equal(fixed.order, off.order)
    assert fixed.per_sample["steps"].tolist() == [config.steps] * 4 == off.per_sample["full"].tolist()
    # adaptive full steps with the tokens' threshold off: the same as without it
    cfg = AdaptiveShortcutConfig(threshold=0.3)
    a = run(debug_base, config, AdaptiveStepPolicy(net, config.check(debug_base.num_tokens), cfg))
    b = run(debug_base, config, AdaptiveStepPolicy(net, config.check(debug_base.num_tokens), cfg, tokens=1.5))
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.per_sample["full"], b.per_sample["full"])


def test_adaptive_tokens_finish_early_with_a_valid_sample(debug_base, debug_recipe):
    config = debug_recipe.sampler
    out = run(debug_base, config, AdaptiveTokens(0.15))
    steps = out.per_sample["steps"]
    assert (steps < config.steps).all() and len(set(steps.tolist())) > 1  # fewer steps, and ragged rows
    assert not (out.tokens == debug_base.mask_id).any() and (out.order >= 0).all()
    assert out.per_sample["full"].tolist() == steps.tolist()  # a finished row runs no base
    assert out.counts["full"] == int(steps.max())  # the batch ran until its last row finished
    for row, n in zip(out.order, steps):  # each row's steps fixed at least the schedule's count
        fixed = torch.bincount(row, minlength=config.steps)[: int(n)]
        assert (fixed[:-1] >= torch.tensor(config.check(debug_base.num_tokens))[: int(n) - 1]).all()


@pytest.mark.parametrize("method", ["adaptive", "adaptive-combined"])
def test_a_trajectory_does_not_depend_on_its_batch_companions(debug_base, debug_recipe, net, method):
    knobs = AdaptiveConfig(0.15) if method == "adaptive" else AdaptiveCombinedConfig(threshold=0.3, tokens=0.2)
    r = resolve_run(debug_base, debug_recipe.sampler, method, shortcut=net, knobs=knobs)
    batch = r.sample(PROMPTS, SEEDS)
    assert len(set(batch.per_sample["steps"].tolist())) > 1  # companions finish earlier and later
    for i in range(len(PROMPTS)):
        alone = r.sample([PROMPTS[i]], [SEEDS[i]])
        assert torch.equal(alone.tokens[0], batch.tokens[i])
        assert {k: int(v[0]) for k, v in alone.per_sample.items()} == {k: int(v[i]) for k, v in batch.per_sample.items()}


class Scripted(AdaptiveStepPolicy):
    """Rows run the base where a scripted signal says so: row i at steps t with (t + i) % 3 == 0."""

    def __init__(self, net, counts, calls):
        super().__init__(net, counts, AdaptiveShortcutConfig(threshold=0.5, max_skip=100))
        self.decided, self.base_rows = [], calls

    def signal(self, base, state, h, pred, rows):
        need = ((state.t + rows) % 3 == 0)
        self.decided.append(need.tolist())
        return need.float()


def test_adaptive_full_steps_run_the_base_on_the_rows_the_signal_chose(debug_base, debug_recipe, net, monkeypatch):
    config = debug_recipe.sampler
    sizes = []
    forward = type(debug_base).forward
    monkeypatch.setattr(type(debug_base), "forward", lambda self, tokens, cond: sizes.append(len(tokens)) or forward(self, tokens, cond))
    policy = Scripted(net, config.check(debug_base.num_tokens), sizes)
    out = run(debug_base, config, policy)
    decided = torch.tensor(policy.decided)  # (N - 1, B)
    assert out.per_sample["full"].tolist() == (1 + decided.sum(0)).tolist()  # the first step, then as decided
    assert out.per_sample["shortcut"].tolist() == [config.steps - 1] * 4  # the signal reads every prediction
    # one base forward per step that needed it, on those rows only (both CFG branches)
    assert sizes == [2 * 4] + [2 * int(n) for n in decided.sum(1) if n]


def test_the_sub_batch_base_call_gives_the_full_batch_features(debug_base, debug_recipe):
    cond = debug_base.encode_conditions(PROMPTS).cat(debug_base.null_conditions(4))
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, debug_base.codebook_size, (8, debug_base.num_tokens), generator=g)
    tokens[:, ::3] = debug_base.mask_id
    _, whole = debug_base(tokens, cond)
    sub = torch.tensor([1, 3, 5, 7])  # rows 1 and 3 of the batch, both branches
    _, part = debug_base(tokens[sub], cond[sub])
    torch.testing.assert_close(part, whole[sub], rtol=1e-5, atol=1e-5)


def test_the_padded_shortcut_inputs_predict_what_the_unpadded_ones_do(debug_base, net):
    cond = debug_base.encode_conditions(PROMPTS[:2]).cat(debug_base.null_conditions(2))
    L = debug_base.num_tokens
    tokens = torch.full((2, L), debug_base.mask_id)
    tokens[:, :20] = 3
    new = torch.zeros(2, L, dtype=torch.bool)
    new[0, 10:20] = True  # row 0 fixed 10 tokens at the step before, row 1 six
    new[1, 14:20] = True
    g = torch.Generator().manual_seed(1)
    h = torch.randn(4, L, debug_base.feature_dim, generator=g)
    inputs = ShortcutInputs(debug_base)
    conditioned = inputs.condition(cond)
    padded = net(h, **new_token_inputs(debug_base, inputs, StepState(1, tokens, cond, new, 0.0), 2), **conditioned)
    assert new_token_inputs(debug_base, inputs, StepState(1, tokens, cond, new, 0.0), 2)["new_mask"].sum(1).tolist() == [10, 6, 10, 6]
    for i in (0, 1):
        rows = torch.tensor([i, i + 2])
        one = StepState(1, tokens[i:i + 1], cond[rows], new[i:i + 1], float((tokens[i] == debug_base.mask_id).float().mean()))
        alone = net(h[rows], **new_token_inputs(debug_base, inputs, one, 2),
                    **{k: v[rows] if torch.is_tensor(v) and v.shape[0] == 4 else v for k, v in conditioned.items()})
        torch.testing.assert_close(padded[rows], alone, rtol=1e-5, atol=1e-5)
    # rows that fixed the same number of tokens take the unpadded inputs, as the shortcut policy always did
    same = new.clone()
    same[1] = new[0]
    assert new_token_inputs(debug_base, inputs, StepState(1, tokens, cond, same, 0.5), 2)["new_mask"].all()


def test_generate_reports_per_sample_figures(debug_base, checkpoint):
    recipe = load_recipe("debug", ["adaptive.threshold=0.15"])
    out = migmcut.generate(recipe, PROMPTS[:2], num_images=2, method="adaptive", base=debug_base)
    assert len(out.per_sample["steps"]) == 4 and out.mean_steps < recipe.sampler.steps
    assert out.per_sample["base_calls"] == out.per_sample["steps"] and out.mean_shortcut_calls == 0
    sc = migmcut.generate("debug", PROMPTS[:2], num_images=2, method="adaptive-shortcut", shortcut=checkpoint,
                          budget=4, base=debug_base)
    assert max(sc.per_sample["base_calls"]) <= 4 and sc.per_sample["steps"] == [8] * 4  # the cap holds
    fixed = migmcut.generate("debug", PROMPTS[:1], method="vanilla", base=debug_base)
    assert fixed.per_sample == {"steps": [8], "base_calls": [8], "shortcut_calls": [0]}


def test_bad_thresholds_and_budgets_are_refused_in_one_line(debug_base, debug_recipe, net):
    with pytest.raises(RecipeError, match=r"adaptive: threshold must be in \(0, 1\]"):
        load_recipe("debug", ["adaptive.threshold=2"])
    with pytest.raises(RecipeError, match="adaptive-shortcut: signal must be one of change, confidence, disagreement"):
        load_recipe("debug", ["adaptive-shortcut.signal=loud"])
    with pytest.raises(RecipeError, match="adaptive-combined: tokens must be in"):
        load_recipe("debug", ["adaptive-combined.tokens=0"])
    with pytest.raises(UserError, match=r"adaptive: threshold must be in \(0, 1\]"):
        resolve_run(debug_base, debug_recipe.sampler, "adaptive", knobs=AdaptiveConfig(1.5))
    with pytest.raises(UserError, match="adaptive-shortcut: threshold must be between 0 and 1"):
        resolve_run(debug_base, debug_recipe.sampler, "adaptive-shortcut", shortcut=net,
                    knobs=AdaptiveShortcutConfig(threshold=-1))
    # max_skip 3 at 8 steps: a sample may need 2 full steps; a cap of 1 cannot be honoured
    with pytest.raises(UserError, match=r"budget=1 cannot be honoured: adaptive-shortcut with max_skip=3 .* >= 2"):
        resolve_run(debug_base, debug_recipe.sampler, "adaptive-shortcut", budget=1, shortcut=net)
    with pytest.raises(UserError, match="budget=1 cannot be honoured"):
        resolve_run(debug_base, debug_recipe.sampler, "adaptive-combined", shortcut=net,
                    knobs=AdaptiveCombinedConfig(budget=1))
    r = resolve_run(debug_base, debug_recipe.sampler, "adaptive-shortcut", budget=2, shortcut=net)
    assert r.knobs.budget == 2 and r.full_steps == [0]


@pytest.mark.parametrize("args, message", [
    (["--method", "adaptive", "--set", "adaptive.threshold=2"], "adaptive: threshold must be in (0, 1]"),
    (["--method", "adaptive-shortcut", "--set", "adaptive-shortcut.threshold=1.5"], "threshold must be between 0 and 1"),
    (["--method", "adaptive-shortcut", "--budget", "1"], "cannot be honoured"),
    (["--method", "adaptive", "--budget", "3"], "adaptive runs every step"),
])
def test_the_cli_refuses_bad_adaptive_input_with_exit_2(checkpoint, tmp_path, args, message):
    result = CliRunner().invoke(app, ["generate", "--recipe", "debug", "--prompt", "a large red circle",
                                      "--shortcut", str(checkpoint), "--out", str(tmp_path), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1


def test_the_cli_reports_per_sample_means(checkpoint, tmp_path):
    result = CliRunner().invoke(app, ["generate", "--recipe", "debug", "--prompt", "a large red circle", "-n", "2",
                                      "--method", "adaptive-combined", "--set", "adaptive-combined.tokens=0.15",
                                      "--shortcut", str(checkpoint), "--out", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)
    assert got["mean_steps"] < 8 and 1 <= got["mean_base_calls"] <= got["mean_steps"]
