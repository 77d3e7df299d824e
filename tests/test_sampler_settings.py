"""Named sampler settings: the tiny-shapes defaults stay bit-for-bit, the real recipes follow their
reference code (numbers below are read from that code, cited per test)."""

import dataclasses
import hashlib
import math

import pytest
import torch
from typer.testing import CliRunner

from migmcut.cli.main import app
from migmcut.errors import UserError
from migmcut.generation import generate
from migmcut.placement import budget_schedule
from migmcut.methods.shortcut import BudgetPolicy
from migmcut.recipe import load_recipe
from migmcut.runner import resolve_run
from migmcut.sampler import sample
from migmcut.schedule import tokens_per_step

PROMPTS = ["a large red circle", "a small blue square left of a large green triangle"]


def _digest(result) -> str:
    data = result.tokens.numpy().astype("int64").tobytes() + result.order.numpy().astype("int64").tobytes()
    return hashlib.sha256(data).hexdigest()[:16]


# Generated with the sampler as it was before the named settings existed (main at 6c4736b): the
# shipped tiny-shapes shortcut was trained on these trajectories, so the defaults must not move.
@pytest.mark.parametrize("label, changes, full, expected", [
    ("debug", {}, None, "89f3b754d18fff34"),
    ("constant cfg, arccos, T=0.7", dict(cfg_schedule="constant", temperature=0.7, steps=5, schedule="arccos"),
     None, "9189d61b6d289789"),
    ("cache 8/3", {}, (8, 3), "4c42f231c6cc67e0"),
])
def test_default_settings_sample_the_tokens_they_always_did(debug_base, debug_recipe, label, changes, full, expected):
    config = dataclasses.replace(debug_recipe.sampler, **changes)
    policy = BudgetPolicy(budget_schedule(*full)) if full else None
    assert _digest(sample(debug_base, PROMPTS, [3, 4], config, policy=policy)) == expected, label


# Generated at 2dce7ea, before conditions became adapter-owned objects (issue 15): every policy that
# reads conditions samples the same tokens with the shipped tiny-shapes base and shortcut.
@pytest.mark.parametrize("method, budget, expected", [
    ("shortcut", 4, "fc9d9cfceb62a10c"),
    ("hybrid", 4, "9a86b18fd630fced"),
    ("recap", 8, "df196f25b34eb3e1"),
    ("mlcache", None, "2030adb09c518bfb"),
])
def test_shipped_tiny_shapes_policies_sample_the_tokens_they_always_did(method, budget, expected):
    from migmcut.base import load_base
    from migmcut.shortcut import load_shortcut, resolve_checkpoint

    recipe = load_recipe("tiny-shapes")
    base = load_base(recipe.base)
    shortcut, _ = load_shortcut(resolve_checkpoint(recipe.shortcut.checkpoint), base)
    assert tokens_per_step(base.num_tokens, 16, recipe.sampler.schedule) == recipe.sampler.check(base.num_tokens)
    policy = resolve_run(base, recipe.sampler, method, budget=budget, shortcut=shortcut).policy()
    assert _digest(sample(base, PROMPTS, [3, 4], recipe.sampler, policy=policy)) == expected


# -- the real recipes' settings, against their reference code ------------------------------------
# MaskGIT: valeoai/Maskgit-pytorch v1 archive 674ef1d934963b7550ad9068015e705a525ceecb, Trainer/vit.py
# (`adap_sche`, `MaskGIT.sample`); the same in Kaiwen-Zhu/MIGM-Shortcut 93349c444c40cd9f681289bfd6233a0ad337f0b1
# MaskGIT-Shortcut/Trainer/vit.py (`sample_shortcut`).
# Lumina-DiMOO: Alpha-VLLM/Lumina-DiMOO 81344e60545ae8d70f11039d3450717d974f831b
# generators/image_generation_generator.py (`generate_image`), utils/generation_utils.py.

@pytest.mark.parametrize("L, N, counts", [
    (1024, 15, [1, 26, 38, 46, 54, 61, 67, 73, 79, 84, 89, 94, 99, 104, 109]),  # issue 18, read off the v1 code
    (1024, 32, [1, 8, 12, 14, 17, 19, 20, 22, 24, 25, 27, 28, 29, 31, 32, 33, 34, 36, 37, 38, 39, 40, 41, 42, 43,
                44, 45, 47, 48, 49, 50, 49]),
    (1024, 8, [1, 72, 103, 128, 150, 171, 190, 209]),
    (256, 16, [1, 6, 9, 10, 12, 14, 15, 16, 18, 19, 20, 21, 22, 23, 25, 25]),
])
def test_maskgit_schedule_fixes_the_reference_counts(L, N, counts):
    """`adap_sche(step, "arccos")`: shares of arccos(linspace(1, 0, N)), rounded, 0 -> 1, remainder last."""
    assert tokens_per_step(L, N, "maskgit") == counts
    assert tokens_per_step(L, N, "arccos") != counts  # the curve migmcut used before: not the reference


@pytest.mark.parametrize("L, N, head, tail", [
    (4096, 64, [2, 3, 7, 8], [100, 101, 100, 100]),  # the recipe: 64x64 tokens, 64 steps
    (1024, 18, [4, 12, 19, 27], [85, 88, 88, 89]),  # generate_image's default timesteps
])
def test_dimoo_schedule_keeps_the_reference_counts_masked(L, N, head, tail):
    """keep_n = floor(L cos(pi/2 (t+1)/N)) in float32, clamped to >= 1, 0 at the last step."""
    counts = tokens_per_step(L, N, "dimoo")
    assert counts[:4] == head and counts[-4:] == tail and sum(counts) == L
    keep = L - sum(counts[:1])
    assert keep == math.floor(L * math.cos(math.pi / 2 / N))  # no float32 edge at step 0


def test_dimoo_schedule_follows_float32_where_the_float64_curve_differs():
    """At N=18, cos(pi/2 * 12/18) = 1/2: float32 (the reference) keeps 511 of 1024, float64 512."""
    dimoo, cosine = tokens_per_step(1024, 18, "dimoo"), tokens_per_step(1024, 18, "cosine")
    assert 1024 - sum(dimoo[:12]) == 511 and 1024 - sum(cosine[:12]) == 512


def test_real_recipes_cfg_and_noise_at_first_and_last_step():
    maskgit, dimoo = load_recipe("maskgit-imagenet512").sampler, load_recipe("dimoo-t2i").sampler
    # v1: _w = w * (indice / (len(scheduler) - 1)); rand = r_temp * gumbel * (1 - indice / (len - 1))
    assert (maskgit.cfg_weight(0), maskgit.cfg_weight(14)) == (0.0, 2.8)
    assert (maskgit.noise_scale(0), maskgit.noise_scale(14)) == (7.0, 0.0)
    assert maskgit.cfg_weight(7) == pytest.approx(1.4)
    # generate_image: (1 + cfg_scale) cond - cfg_scale uncond; mask_by_random_topk: log p + temperature * g
    assert (dimoo.cfg_weight(0), dimoo.cfg_weight(63)) == (4.0, 4.0)
    assert (dimoo.noise_scale(0), dimoo.noise_scale(63)) == (1.0, 1.0) == (dimoo.temperature,) * 2
    # tiny-shapes keeps its own: w (t + 1) / N and r_temp (1 - t / N)
    tiny = load_recipe("tiny-shapes").sampler
    assert (tiny.cfg_weight(0), tiny.cfg_weight(15)) == (3.0 / 16, 3.0)
    assert (tiny.noise_scale(0), tiny.noise_scale(15)) == (4.5, 4.5 / 16)


def test_real_recipes_name_the_reference_semantics():
    maskgit, dimoo = load_recipe("maskgit-imagenet512").sampler, load_recipe("dimoo-t2i").sampler
    assert (maskgit.schedule, maskgit.temperature_mode, maskgit.confidence) == ("maskgit", "multiply", "tempered")
    assert (dimoo.schedule, dimoo.temperature_mode, dimoo.confidence) == ("dimoo", "divide", "untempered")
    assert maskgit.budget_rounding == dimoo.budget_rounding == "half-even"


# MIGM-Shortcut 93349c4 MaskGIT-Shortcut/Trainer/vit.py `sample_shortcut` and DiMOO-Shortcut/generators/
# image_generation_generator.py: refresh step k = max(prev + 1, round((left_timesteps + 1) * (k / (left_budget + 1)))).
PAPER_PLACEMENTS = {
    (15, 7): [0, 2, 4, 6, 9, 11, 13], (15, 8): [0, 2, 4, 6, 8, 9, 11, 13],
    (32, 8): [0, 4, 8, 12, 16, 20, 24, 28], (32, 9): [0, 4, 7, 11, 14, 18, 21, 25, 28],
    (32, 12): [0, 3, 5, 8, 11, 13, 16, 19, 21, 24, 27, 29],
    (64, 14): [0, 5, 9, 14, 18, 23, 27, 32, 37, 41, 46, 50, 55, 59], (64, 11): [0, 6, 12, 17, 23, 29, 35, 41, 47, 52, 58],
    (64, 9): [0, 7, 14, 21, 28, 36, 43, 50, 57],
}
# exact halves: Python's round goes to even, floor(x + 0.5) up
HALVES = {(5, 2): ([0, 2], [0, 3]), (10, 4): ([0, 2, 5, 8], [0, 3, 5, 8]), (6, 4): ([0, 2, 3, 4], [0, 2, 3, 5]),
          (15, 6): ([0, 2, 5, 8, 10, 12], [0, 3, 5, 8, 10, 13]), (14, 4): ([0, 4, 7, 10], [0, 4, 7, 11])}


@pytest.mark.parametrize("N, B", list(PAPER_PLACEMENTS))
def test_the_papers_budget_placements(N, B):
    assert budget_schedule(N, B, "half-even") == PAPER_PLACEMENTS[N, B]


@pytest.mark.parametrize("N, B", list(HALVES))
def test_budget_placement_on_exact_halves(N, B):
    even, up = HALVES[N, B]
    assert budget_schedule(N, B, "half-even") == even
    assert budget_schedule(N, B, "half-up") == up == budget_schedule(N, B)


def test_generate_places_full_steps_with_the_recipes_rounding(debug_base):
    config = dataclasses.replace(load_recipe("debug").sampler, steps=5)
    half_even = dataclasses.replace(config, budget_rounding="half-even")
    assert resolve_run(debug_base, half_even, "cache", budget=2).full_steps == [0, 2]
    assert resolve_run(debug_base, config, "cache", budget=2).full_steps == [0, 3]


# -- the settings change what the sampler does -------------------------------------------------------
def _tokens(base, config, **changes):
    return sample(base, PROMPTS, [3, 4], dataclasses.replace(config, **changes)).tokens


def test_temperature_multiply_is_divide_by_the_inverse(debug_base, debug_recipe):
    config = debug_recipe.sampler
    multiplied = _tokens(debug_base, config, temperature=2.0, temperature_mode="multiply")
    assert torch.equal(multiplied, _tokens(debug_base, config, temperature=0.5))
    assert not torch.equal(multiplied, _tokens(debug_base, config, temperature=2.0))


def test_untempered_confidence_differs_only_when_the_temperature_does(debug_base, debug_recipe):
    config = debug_recipe.sampler
    assert torch.equal(_tokens(debug_base, config, confidence="untempered"), _tokens(debug_base, config))
    hot = dict(temperature=3.0, r_temp=0.5)
    assert not torch.equal(_tokens(debug_base, config, confidence="untempered", **hot), _tokens(debug_base, config, **hot))


@pytest.mark.parametrize("name, value", [("cfg_schedule", "linear-from-zero"), ("cfg_schedule", "constant"),
                                         ("noise_schedule", "linear-to-zero"), ("noise_schedule", "constant")])
def test_each_schedule_name_changes_the_tokens(debug_base, debug_recipe, name, value):
    assert not torch.equal(_tokens(debug_base, debug_recipe.sampler, **{name: value}),
                           _tokens(debug_base, debug_recipe.sampler))


def test_the_maskgit_schedule_drives_the_sampler(debug_base, debug_recipe):
    result = sample(debug_base, PROMPTS, [3, 4], dataclasses.replace(debug_recipe.sampler, schedule="maskgit"))
    expected = tokens_per_step(debug_base.num_tokens, debug_recipe.sampler.steps, "maskgit")
    assert torch.bincount(result.order[0], minlength=len(expected)).tolist() == expected


# -- bad settings: one line, exit 2 --------------------------------------------------------------------
@pytest.mark.parametrize("setting, words", [
    ("sampler.cfg_schedule=ramp", "cfg_schedule must be one of"),
    ("sampler.noise_schedule=cosine", "noise_schedule must be one of"),
    ("sampler.temperature_mode=power", "temperature_mode must be one of"),
    ("sampler.confidence=calibrated", "confidence must be one of"),
    ("sampler.budget_rounding=down", "budget_rounding must be one of"),
    ("sampler.schedule=maskgit2", "schedule must be one of"),
    ("sampler.temperature=0", "temperature 0 with temperature_mode multiply"),
])
def test_an_unknown_or_incompatible_setting_is_one_line_exit_2(tmp_path, setting, words):
    extra = ["--set", "sampler.temperature_mode=multiply"] if setting.startswith("sampler.temperature=") else []
    res = CliRunner().invoke(app, ["generate", "--recipe", "debug", "--device", "cpu", "--prompt", "a large red circle",
                                   "--out", str(tmp_path / "o"), "--set", setting, *extra])
    assert res.exit_code == 2, res.output
    assert words in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_a_reference_schedule_with_too_many_steps_is_a_user_error(debug_base, debug_recipe):
    recipe = dataclasses.replace(debug_recipe, sampler=dataclasses.replace(debug_recipe.sampler, schedule="maskgit"))
    with pytest.raises(UserError, match="nothing to fix"):
        generate(recipe, ["a large red circle"], steps=200, base=debug_base)


# -- aMUSEd: diffusers 0.42.1 schedulers/scheduling_amused.py (AmusedScheduler) and
# pipelines/deprecated/amused/pipeline_amused.py (AmusedPipeline.__call__) -----------------------------
@pytest.mark.parametrize("L, N", [(256, 12), (1024, 12), (16, 6), (16, 12), (1024, 32), (4096, 18)])
def test_amused_schedule_fixes_what_the_scheduler_unmasks(L, N):
    """AmusedScheduler.step (cosine) on random logits: the tokens it unmasks per step."""
    from diffusers import AmusedScheduler

    K = 8
    scheduler = AmusedScheduler(mask_token_id=K)
    scheduler.set_timesteps(N)
    g = torch.Generator().manual_seed(0)
    state, counts = torch.full((1, L), K), []
    for timestep in scheduler.timesteps:
        nxt = scheduler.step(torch.randn(1, L, K, generator=g), timestep, state, generator=g).prev_sample
        counts.append(int((state == K).sum() - (nxt == K).sum()))
        state = nxt
    assert tokens_per_step(L, N, "amused") == counts


def test_amused_recipes_name_the_pipeline_defaults():
    from diffusers import AmusedScheduler

    for name in ("amused-256", "amused-512"):
        s = load_recipe(name).sampler
        assert (s.steps, s.schedule, s.cfg, s.cfg_schedule, s.cfg_mix) == (12, "amused", 9.0, "constant", "difference")
        assert (s.draw, s.confidence, s.temperature, s.temperature_mode) == ("multinomial", "probability", 1.0, "divide")
        scheduler = AmusedScheduler(mask_token_id=8255)
        scheduler.set_timesteps(12, (2, 0))  # the pipeline's temperature default
        assert [s.noise_scale(t) for t in range(12)] == scheduler.temperatures.tolist()
    assert load_recipe("amused-256").base.height == 256 and load_recipe("amused-512").base.height == 512


def test_difference_cfg_mix_is_the_pipelines_formula():
    from migmcut.recipe import SamplerConfig
    from migmcut.sampler import guided

    logits = torch.randn(2 * 3, 5, 7)
    config = SamplerConfig(cfg=9.0, cfg_schedule="constant", cfg_mix="difference")
    cond, uncond = logits[:3], logits[3:]
    assert torch.equal(guided(config, 0, logits), uncond + 10.0 * (cond - uncond))
    torch.testing.assert_close(guided(config, 0, logits), guided(dataclasses.replace(config, cfg_mix="weighted"), 0, logits))


def test_multinomial_draw_is_torch_multinomial_and_probability_confidence_the_schedulers():
    from diffusers.schedulers.scheduling_amused import gumbel_noise

    from migmcut.recipe import SamplerConfig
    from migmcut.sampler import _draw

    L, K = 10, 6
    logits = torch.randn(1, L, K) * 3
    where = torch.tensor([[0, 2, 3, 7, 9]])
    config = SamplerConfig(cfg=None, draw="multinomial", confidence="probability", noise_schedule="linspace",
                           r_temp=2.0, steps=4)
    g = torch.Generator().manual_seed(5)
    u_tok, u_conf = torch.empty(1, L, K).exponential_(1, generator=g), torch.rand(1, L, generator=g)
    candidate, conf = _draw(config, 1, logits[:, where[0]], where, u_tok, u_conf)
    g = torch.Generator().manual_seed(5)
    probs = logits[0].softmax(-1)
    drawn = torch.multinomial(probs, 1, generator=g)[:, 0]
    noise = gumbel_noise(torch.zeros(1, L), generator=g)
    assert torch.equal(candidate[0], drawn[where[0]])
    expected = torch.log(probs.gather(-1, drawn[:, None])[:, 0].clamp(1e-20)) + torch.linspace(2, 0, 4)[1] * noise[0]
    assert torch.equal(conf[0], expected[where[0]])


def test_behaviour_keeps_what_changes_a_trajectory():
    from migmcut.recipe import SamplerConfig

    plain = SamplerConfig()
    assert "r_temp_end" not in plain.behaviour() and "confidence" not in plain.behaviour()
    amused = load_recipe("amused-256").sampler
    assert amused.behaviour()["confidence"] == "probability" and amused.behaviour()["r_temp_end"] == 0.0
    assert dataclasses.replace(amused, draw="inverse-cdf").behaviour() != amused.behaviour()


@pytest.mark.parametrize("setting, words", [("sampler.cfg_mix=sum", "cfg_mix must be one of"),
                                            ("sampler.draw=gumbel", "draw must be one of"),
                                            ("sampler.r_temp_end=-1", "r_temp_end must be >= 0")])
def test_an_unknown_amused_setting_is_one_line_exit_2(tmp_path, setting, words):
    res = CliRunner().invoke(app, ["generate", "--recipe", "debug", "--device", "cpu", "--prompt", "a large red circle",
                                   "--out", str(tmp_path / "o"), "--set", setting])
    assert res.exit_code == 2, res.output
    assert words in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
