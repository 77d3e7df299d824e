"""migmcut.hook: the shortcut inside sampling loops migmcut did not write, token for token against
migmcut's own sampler (same shortcut, placement and random draws); with the hook off, the loop is
untouched; what the hook cannot follow is one UserError naming what it saw."""

import dataclasses

import pytest
import torch
from twins import AMUSED_RECIPE as AMUSED
from twins import MASKGIT_RELEASE as RELEASE
from twins import MASKGIT_SAMPLING as SAMPLING
from twins import amused_pipeline, amused_twin

import migmcut
from migmcut.base import load_base
from migmcut.base.dimoo import write_random_checkpoint as dimoo_checkpoint
from migmcut.base.maskgit import write_random_checkpoint as maskgit_checkpoint
from migmcut.base.maskgit_shortcut import MaskGITShortcut
from migmcut.base.tiny_shapes import IMAGE_OFFSET, MASK, NULL, tokenize_prompts
from migmcut.errors import CheckpointError, UserError
from migmcut.methods.shortcut import BudgetPolicy
from migmcut.placement import budget_schedule, load_schedule
from migmcut.recipe import load_recipe
from migmcut.runner import resolve_run
from migmcut.sampler import sample
from migmcut.schedule import tokens_per_step
from migmcut.shortcut import Shortcut, ShortcutConfig, load_shortcut, resolve_checkpoint


def random_shortcut(base, recipe, seed: int = 0, scale: float = 0.5) -> Shortcut:
    """A migmcut Shortcut for `base` with every weight moved off its initialisation (an untrained one
    is the identity), so a shortcut step visibly differs from the cache."""
    section = dataclasses.replace(recipe.shortcut, heads=2)
    torch.manual_seed(seed)
    net = Shortcut(ShortcutConfig.from_recipe(section, base.feature_dim, base.condition_dim))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return net.eval()


@torch.no_grad()
def plain_loop(logits_of, rows: int, L: int, K: int, seeds: list[int], config) -> torch.Tensor:
    """A confidence sampling loop written here (not migmcut's sampler), at a recipe's settings:
    `logits_of(tokens, t)` -> (conditional, unconditional or None) logits (rows, L, K) from the network."""
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    tokens = torch.full((rows, L), K)
    for t, k in enumerate(tokens_per_step(L, config.steps, config.schedule)):
        u_tok = torch.stack([torch.rand(L, generator=g) for g in gens])
        u_conf = torch.stack([torch.rand(L, generator=g) for g in gens])
        cond, uncond = logits_of(tokens, t)
        w = config.cfg_weight(t)
        mixed = cond.float() if uncond is None else (1 + w) * cond.float() - w * uncond.float()
        where = (tokens == K).nonzero()[:, 1].view(rows, -1)
        logits = mixed.gather(1, where[..., None].expand(-1, -1, K))
        scaled = logits * config.temperature if config.temperature_mode == "multiply" else logits / config.temperature
        logp = scaled.log_softmax(-1)
        cdf = logp.exp().cumsum(-1)
        u = u_tok.gather(1, where)
        candidate = torch.searchsorted(cdf, (u * cdf[..., -1])[..., None]).squeeze(-1).clamp(max=K - 1)
        scored = logp if config.confidence == "tempered" else logits.log_softmax(-1)
        noise = -torch.log((-torch.log(u_conf.gather(1, where).clamp(1e-20))).clamp(1e-20))
        conf = scored.gather(-1, candidate[..., None]).squeeze(-1) + config.noise_scale(t) * noise
        pick = conf.topk(k, dim=-1).indices
        tokens = tokens.scatter(1, where.gather(1, pick), candidate.gather(1, pick))
    return tokens


# -- diffusers' AmusedPipeline on a tiny random twin ------------------------------------------------
@pytest.fixture(scope="module")
def amused(tmp_path_factory):
    base = load_base(load_recipe(AMUSED, amused_twin(tmp_path_factory.mktemp("amused"))).base)
    return base, amused_pipeline(base), random_shortcut(base, load_recipe(AMUSED))


def _latents(pipe, steps, seed, output_type="latent"):
    return pipe("a red fox", num_inference_steps=steps, generator=torch.Generator().manual_seed(seed),
                output_type=output_type).images


@pytest.mark.parametrize("steps,budget", [(5, 2), (8, 3), (12, 4)])
def test_amused_pipeline_with_the_shortcut_attached_gives_the_samplers_tokens(amused, steps, budget):
    """AmusedPipeline(output_type="latent") with the hook on pipe.transformer == migmcut's sample with
    the same shortcut, placement (the amused recipes' half-even rounding) and seed; CFG rows batched
    [uncond, cond] in one call, migmcut's [cond, uncond]: handled per row."""
    base, pipe, shortcut = amused
    config = dataclasses.replace(load_recipe(AMUSED).sampler, steps=steps)
    full = budget_schedule(steps, budget, "half-even")
    assert steps != 5 or full != budget_schedule(steps, budget, "half-up")  # the family's rounding matters here
    moved = 0
    for seed in (0, 1):
        with migmcut.attach(pipe.transformer, shortcut, steps=steps, budget=budget, base=base) as hook:
            got = _latents(pipe, steps, seed)
        assert hook.full_steps == full and hook.counts == {"full": budget, "shortcut": steps - budget, "passed": 0}
        ours = sample(base, ["a red fox"], [seed], config, policy=BudgetPolicy(full, shortcut)).tokens
        assert torch.equal(got.reshape(1, -1), ours), (steps, budget, seed)
        cache = sample(base, ["a red fox"], [seed], config, policy=BudgetPolicy(full)).tokens
        moved += not torch.equal(ours, cache)
    assert moved  # the shortcut's predictions changed the image: its steps did run


def test_pipeline_with_the_hook_off_is_bit_identical_to_the_pipeline_alone(amused):
    base, pipe, shortcut = amused
    alone = [_latents(pipe, 8, 3), _latents(pipe, 8, 3, "np")]
    hook = migmcut.attach(pipe.transformer, shortcut, steps=8, budget=2, base=base)
    hooked = _latents(pipe, 8, 3)
    hook.remove()
    hook.remove()  # idempotent
    assert not torch.equal(hooked, alone[0])  # it was on
    assert "forward" not in pipe.transformer.__dict__ and not hook.active
    after = [_latents(pipe, 8, 3), _latents(pipe, 8, 3, "np")]
    assert torch.equal(after[0], alone[0]) and (after[1] == alone[1]).all()
    with migmcut.attach(pipe.transformer, shortcut, steps=8, budget=2, base=base):
        assert torch.equal(_latents(pipe, 8, 3), hooked)  # a second image from the start
        assert torch.equal(_latents(pipe, 8, 3), hooked)
    assert torch.equal(_latents(pipe, 8, 3), alone[0]) and (_latents(pipe, 8, 3, "np") == alone[1]).all()


def test_migmcut_sampler_on_a_hooked_base_runs_the_network_itself(amused):
    """The amused base's own forward calls the hooked transformer: the hook stands aside for it."""
    base, pipe, shortcut = amused
    config = dataclasses.replace(load_recipe(AMUSED).sampler, steps=6)
    vanilla = sample(base, ["a red fox"], [5], config).tokens
    with migmcut.attach(pipe.transformer, shortcut, steps=6, budget=2, base=base) as hook:
        assert torch.equal(sample(base, ["a red fox"], [5], config).tokens, vanilla)
        assert torch.equal(_latents(pipe, 6, 5).reshape(1, -1),
                           sample(base, ["a red fox"], [5], config, policy=BudgetPolicy([0, 3], shortcut)).tokens)
    assert hook.counts["full"] == 2


# -- the tiny-shapes base (shipped weights and shortcut) under a loop written here --------------------
@pytest.fixture(scope="module")
def tiny():
    recipe = load_recipe("tiny-shapes")
    return recipe, load_base(recipe.base), resolve_checkpoint(recipe.shortcut.checkpoint)


def tiny_logits(base, prompts: list[str], split: bool):
    """The tiny-shapes network as a user's loop calls it: mlm(input_ids=prompt + image ids), CFG rows in
    one call [cond, uncond] or one call per branch (`split`)."""
    P, K = base.prompt_length, base.codebook_size
    cond = tokenize_prompts(prompts, P)
    null = torch.full_like(cond, NULL)

    def run(prompt, image):
        return base.mlm(input_ids=torch.cat([prompt, image], 1)).logits[:, P:, IMAGE_OFFSET : IMAGE_OFFSET + K]

    def logits_of(tokens, t):
        image = torch.where(tokens == K, MASK, tokens + IMAGE_OFFSET)
        if split:
            return run(cond, image), run(null, image)
        return run(torch.cat([cond, null]), torch.cat([image, image])).chunk(2)

    return logits_of


@pytest.mark.parametrize("steps,budget,split", [(16, 4, False), (16, 4, True), (12, 3, False)])
def test_tiny_shapes_plain_loop_with_the_shipped_shortcut_equals_the_sampler(tiny, steps, budget, split):
    recipe, base, checkpoint = tiny
    config = dataclasses.replace(recipe.sampler, steps=steps)
    prompts, seeds = ["a large red circle", "a small blue square above a green triangle"], [11, 12]
    with migmcut.attach(base.mlm, str(checkpoint), steps=steps, budget=budget, base=base) as hook:
        got = plain_loop(tiny_logits(base, prompts, split), 2, base.num_tokens, base.codebook_size, seeds, config)
    searched = load_schedule(checkpoint, steps, budget)
    assert hook.full_steps == (searched or budget_schedule(steps, budget, "half-up"))
    assert (searched is not None) == (steps == 16) and searched != budget_schedule(steps, budget)  # (16, 4): searched
    slots = 2 if split else 1
    assert hook.counts == {"full": budget * slots, "shortcut": (steps - budget) * slots, "passed": 0}
    net, _ = load_shortcut(checkpoint, base)
    ours = sample(base, prompts, seeds, config, policy=BudgetPolicy(hook.full_steps, net)).tokens
    assert torch.equal(got, ours)
    assert not torch.equal(ours, sample(base, prompts, seeds, config, policy=BudgetPolicy(hook.full_steps)).tokens)


# -- MaskGIT's sample loop with the paper's released shortcut (it reads the whole sequence) -------------
def test_maskgit_loop_with_the_released_shortcut_equals_the_sampler(tmp_path):
    sets = [f"{k}={v}" for k, v in maskgit_checkpoint(tmp_path, **SAMPLING["twin"]).items()]
    recipe = load_recipe("maskgit-imagenet512", sets + ["sampler.steps=8"])
    base = load_base(recipe.base)
    labels, seeds, (h, w), B = [1, 7], [101, 102], base.grid, 2

    def logits_of(tokens, t):  # the reference's vit(code, labels, drop_label): CFG rows [cond, uncond]
        code = tokens.view(B, h, w)
        drop = torch.tensor([False, False, True, True])
        return base.net(torch.cat([code, code]), torch.tensor(labels * 2), drop).chunk(2)

    with migmcut.attach(base.net, RELEASE, steps=8, budget=3, base=base) as hook:
        got = plain_loop(logits_of, B, base.num_tokens, base.codebook_size, seeds, recipe.sampler)
    run = resolve_run(base, dataclasses.replace(recipe.sampler, steps=8, budget_rounding="half-even"), "shortcut",
                      budget=3, shortcut=RELEASE)
    assert hook.full_steps == run.full_steps == [0, 3, 5] and hook.reads_sequence
    assert torch.equal(got, sample(base, labels, seeds, recipe.sampler, policy=run.policy()).tokens)
    assert torch.equal(base.net(torch.full((1, h, w), base.mask_id), torch.tensor([3]), torch.tensor([False])),
                       base(torch.full((1, h * w), base.mask_id), base.encode_conditions([3]))[0])


# -- Lumina-DiMOO's generate_image: one call per branch, the state written in place, a vocabulary probe ---
def test_dimoo_generate_image_style_loop_equals_the_sampler(tmp_path):
    sets = dimoo_checkpoint(tmp_path, words=["a", "red", "fox", "in", "snow"])
    sets |= {"base.height": 8, "base.width": 8, "base.max_prompt_tokens": 14, "sampler.steps": 8}
    recipe = load_recipe("dimoo-t2i", [f"{k}={v}" for k, v in sets.items()])
    base = load_base(recipe.base)
    shortcut = random_shortcut(base, recipe, seed=3, scale=0.3)
    model = base.attach_network()
    cond, null = base.encode_conditions(["fox"])["ids"], base.null_conditions(1)["ids"]
    assert bool((cond >= 0).all() and (null >= 0).all())  # no padding: the loop's sequences are the sampler's
    K, off, rows = base.codebook_size, base.image_offset, 14 + base.image_index
    x = torch.cat([cond, base.tail[None].clone()], 1)
    x[:, rows] = base.cfg.mask_token_id

    def logits_of(tokens, t):
        if t == 0:
            model(torch.zeros(1, 1, dtype=torch.long), infer=True)  # generate_image's vocabulary probe
        x[:, rows] = torch.where(tokens == K, base.cfg.mask_token_id, tokens + off)  # in place, as the reference
        uncond = torch.cat([null, x[:, 14:]], 1)
        return (model(x, infer=True).logits[:, rows, off : off + K], model(uncond, infer=True).logits[:, rows, off : off + K])

    with migmcut.attach(model, shortcut, steps=8, budget=3, base=base) as hook:
        got = plain_loop(logits_of, 1, base.num_tokens, K, [21], recipe.sampler)
    assert hook.full_steps == budget_schedule(8, 3, "half-even")
    assert hook.counts == {"full": 6, "shortcut": 10, "passed": 1}
    ours = sample(base, ["fox"], [21], recipe.sampler, policy=BudgetPolicy(hook.full_steps, shortcut)).tokens
    assert torch.equal(got, ours)
    assert not torch.equal(ours, sample(base, ["fox"], [21], recipe.sampler, policy=BudgetPolicy(hook.full_steps)).tokens)


# -- refusals: one line, naming what was seen ----------------------------------------------------------
def _one_line(err) -> str:
    text = str(err.value)
    assert "\n" not in text, text
    return text


def test_attach_refuses_bad_arguments(tiny, amused):
    recipe, base, checkpoint = tiny
    abase, pipe, ashortcut = amused
    sc = random_shortcut(base, recipe)
    cases = [
        (dict(model=base.mlm.cls), "model is a BertOnlyMLMHead, not the network"),
        (dict(model=pipe.transformer), "model is a UVit2DModel, not the network of this tiny-shapes base"),
        (dict(base=base.mlm), "base must be the migmcut base"),
        (dict(steps=0), "steps=0 must be between 1 and the number of image tokens (256)"),
        (dict(steps=257), "steps=257 must be between 1"),
        (dict(budget=0), "budget=0 must be between 1 and the step count (8)"),
        (dict(budget=9), "budget=9 must be between 1 and the step count (8)"),
        (dict(budget=2.5), "budget=2.5 must be a whole number"),
        (dict(steps=True), "steps=True must be a whole number"),
        (dict(schedule="best"), "schedule='best': choose auto, uniform or searched"),
        (dict(rounding="up"), "rounding='up'"),
        (dict(shortcut=(sc, {"base_fingerprint": "0123abcd"})), "shortcut was trained for base 0123abcd"),
        (dict(shortcut=ashortcut), "shortcut predicts 8-wide features; this base's are 128"),
        (dict(shortcut=3), "shortcut must be a checkpoint path"),
        (dict(shortcut="/nonexistent/sc"), "shortcut: /nonexistent/sc is not a shortcut checkpoint"),
    ]
    for change, words in cases:
        kw = dict(model=base.mlm, shortcut=sc, steps=8, budget=2, base=base) | change
        with pytest.raises(UserError) as err:
            migmcut.attach(**kw)
        assert words in _one_line(err), (change, str(err.value))
        assert "forward" not in base.mlm.__dict__
    with pytest.raises(CheckpointError) as err:  # a checkpoint trained for another base (the fingerprint)
        migmcut.attach(pipe.transformer, str(checkpoint), steps=8, budget=2, base=abase)
    assert "shortcut: " in _one_line(err) and "was trained for base" in str(err.value)
    released = MaskGITShortcut(abase.feature_dim, 16, heads=16)
    with pytest.raises(UserError) as err:
        migmcut.attach(pipe.transformer, released, steps=8, budget=2, base=abase)
    assert "reads the whole input sequence" in _one_line(err) and "amused" in str(err.value)
    with migmcut.attach(base.mlm, sc, steps=8, budget=2, base=base):
        with pytest.raises(UserError, match="already has a shortcut attached"):
            migmcut.attach(base.mlm, sc, steps=8, budget=2, base=base)
    assert "forward" not in base.mlm.__dict__


def _ids(base, tokens, prompt="a red circle"):
    """tiny-shapes input ids for a token state (rows, L) (base.mask_id where masked), CFG-free."""
    image = torch.where(tokens == base.mask_id, MASK, tokens + IMAGE_OFFSET)
    return torch.cat([tokenize_prompts([prompt] * len(tokens), base.prompt_length), image], 1)


def test_calls_the_hook_cannot_follow_are_refused(tiny):
    recipe, base, _ = tiny
    sc = random_shortcut(base, recipe)
    L, M = base.num_tokens, base.mask_id
    start = torch.full((2, L), M)
    step1 = start.clone()
    step1[:, :4] = 7
    step2 = step1.clone()
    step2[:, 4:9] = 3

    def run(calls, steps=3, budget=1):
        with torch.no_grad(), migmcut.attach(base.mlm, sc, steps=steps, budget=budget, base=base) as hook:
            for c in calls:
                base.mlm(input_ids=c)
        return hook

    changed = step2.clone()
    changed[1, 2] = 5
    cases = [
        ([start, step1, changed], "call 3 changes a token already fixed (row 1, position 2: 7 -> 5)"),
        ([start, step1, step1], "call 3 fixes no new token in row 0 since the call before"),
        ([start, step1, step2[:1]], "call 3 has a batch of 1 rows; the calls it continues had 2"),
        ([start, step1, step2, step2.masked_fill(torch.arange(L) == 20, 1)], "more calls than steps"),
        ([start, step1, start], "every token is masked: a new image, but the last one stopped after 2 of steps=3"),
    ]
    for calls, words in cases:
        with pytest.raises(UserError) as err:
            run([_ids(base, c) for c in calls])
        assert words in _one_line(err), (words, str(err.value))
    with pytest.raises(UserError) as err:  # the conditions of the calls a slot continues
        run([_ids(base, start), _ids(base, step1), _ids(base, step2, "a blue square")])
    assert "call 3: its condition 'ids' is not that of the calls it continues" in _one_line(err)
    with pytest.raises(UserError) as err:  # the loop ran fewer steps than attached with
        run([_ids(base, start), _ids(base, step1)], steps=4)
    assert "the loop stopped after 2 of steps=4 steps" in _one_line(err)
    with pytest.raises(UserError) as err:
        run([torch.cat([_ids(base, start), torch.zeros(2, 1, dtype=torch.long)], 1)])
    assert "not (rows, 12 prompt + 256 image positions)" in _one_line(err)
    with pytest.raises(UserError) as err:
        with torch.no_grad(), migmcut.attach(base.mlm, sc, steps=3, budget=1, base=base):
            base.mlm(input_ids=_ids(base, start), attention_mask=torch.ones(2, 268))
    assert "also passes attention_mask" in _one_line(err)
    # after a refusal the hook starts the next image afresh; a whole image, then another, is fine
    hook = run([_ids(base, c) for c in (start, step1, step2, start, step1, step2)])
    assert hook.counts == {"full": 2, "shortcut": 4, "passed": 0} and not hook.active
    assert "forward" not in base.mlm.__dict__


def test_shortcut_step_output_is_the_networks_type_with_the_heads_logits(tiny):
    recipe, base, _ = tiny
    sc = random_shortcut(base, recipe)
    L, M, P = base.num_tokens, base.mask_id, base.prompt_length
    start = torch.full((1, L), M)
    step1 = start.clone()
    step1[0, 10:30] = 4
    with torch.no_grad(), migmcut.attach(base.mlm, sc, steps=2, budget=1, base=base) as hook:
        full = base.mlm(input_ids=_ids(base, start))
        short = base.mlm(input_ids=_ids(base, step1))
    assert type(short) is type(full) and short.logits.shape == full.logits.shape
    image = short.logits[:, P:, IMAGE_OFFSET : IMAGE_OFFSET + base.codebook_size]
    assert torch.isfinite(image).all() and short.logits[:, :P].isnan().all()
    assert short.logits[:, P:, :IMAGE_OFFSET].isnan().all()  # a shortcut step predicts image codes only
    with torch.no_grad():
        h0 = base(start, base.encode_conditions(["a red circle"]))[1]
        policy = BudgetPolicy([0], sc)
        policy.features = h0
        state = type("S", (), dict(tokens=step1, cond=base.encode_conditions(["a red circle"]),
                                   new_tokens=step1 != M, mask_ratio=float((step1 == M).float().mean())))
        want = base.head(policy.predict(base, state, 1))
    torch.testing.assert_close(image, want, rtol=0, atol=1e-5)
    assert hook.counts == {"full": 1, "shortcut": 1, "passed": 0}


def test_every_family_declares_attach_and_its_recipes_rounding():
    from migmcut.base import BaseModel, registry

    for name in ("tiny-shapes", "debug", "maskgit-imagenet512", "dimoo-t2i", "amused-256", "amused-512"):
        recipe = load_recipe(name)
        cls = registry.resolve(recipe.base.kind)
        assert cls.budget_rounding == recipe.sampler.budget_rounding, name
        for method in ("attach_network", "attach_read", "attach_feature_site", "attach_features", "attach_output"):
            assert getattr(cls, method) is not getattr(BaseModel, method), (name, method)
