import dataclasses

import pytest
import torch

from migmcut.recipe import SamplerConfig
from migmcut.sampler import sample, trajectory_seed
from migmcut.schedule import tokens_per_step

PROMPTS = ["a large red circle", "a small blue square left of a large green triangle", "a small yellow triangle"]


def run(base, config, prompts=PROMPTS, seeds=(11, 12, 13), **kw):
    return sample(base, list(prompts), list(seeds), config, **kw)


def test_all_positions_fixed_once_following_the_schedule(debug_base, debug_recipe):
    config = debug_recipe.sampler
    events = []
    result = run(debug_base, config, observers=(events.append,))
    L = debug_base.num_tokens
    assert (result.tokens != debug_base.mask_id).all()
    assert ((result.tokens >= 0) & (result.tokens < debug_base.codebook_size)).all()
    expected = tokens_per_step(L, config.steps, config.schedule)
    for row in result.order:
        assert torch.bincount(row, minlength=config.steps).tolist() == expected
    assert [e.t for e in events] == list(range(config.steps))
    assert result.counts == {"full": config.steps}
    # observers see both CFG branches' features and exactly the positions fixed at that step
    assert events[0].features.shape == (3, 2, L, debug_base.feature_dim)
    for e in events:
        assert torch.equal(e.fixed, result.order == e.t)
    assert events[0].mask_ratio == 1.0


def test_same_seeds_same_images_other_seeds_other_images(debug_base, debug_recipe):
    a = run(debug_base, debug_recipe.sampler)
    b = run(debug_base, debug_recipe.sampler)
    c = run(debug_base, debug_recipe.sampler, seeds=(21, 22, 23))
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.order, b.order)
    assert not torch.equal(a.tokens, c.tokens)


def test_a_trajectory_does_not_depend_on_its_batch(debug_base, debug_recipe):
    together = run(debug_base, debug_recipe.sampler)
    for i, (prompt, seed) in enumerate(zip(PROMPTS, (11, 12, 13))):
        alone = run(debug_base, debug_recipe.sampler, prompts=[prompt], seeds=[seed])
        assert torch.equal(alone.tokens[0], together.tokens[i])
        assert torch.equal(alone.order[0], together.order[i])


def test_cfg_weight_zero_equals_the_conditional_branch_alone(debug_base, debug_recipe):
    guided_off = dataclasses.replace(debug_recipe.sampler, cfg=0.0)
    no_branch = dataclasses.replace(debug_recipe.sampler, cfg=None)
    a = run(debug_base, guided_off)
    b = run(debug_base, no_branch)
    assert torch.equal(a.tokens, b.tokens)
    guided = run(debug_base, dataclasses.replace(debug_recipe.sampler, cfg=5.0))
    assert not torch.equal(a.tokens, guided.tokens)


def test_without_noise_the_seed_does_not_matter(debug_base, debug_recipe):
    greedy = dataclasses.replace(debug_recipe.sampler, temperature=0.0, r_temp=0.0)
    a = run(debug_base, greedy, seeds=(1, 2, 3))
    b = run(debug_base, greedy, seeds=(7, 8, 9))
    assert torch.equal(a.tokens, b.tokens)


def test_cfg_weight_ramps_linearly_to_the_recipe_value():
    c = SamplerConfig(steps=4, cfg=2.0, cfg_schedule="linear")
    assert [c.cfg_weight(t) for t in range(4)] == [0.5, 1.0, 1.5, 2.0]
    assert SamplerConfig(steps=4, cfg=2.0, cfg_schedule="constant").cfg_weight(0) == 2.0


def test_trajectory_seeds_are_distinct_and_stable():
    seeds = [trajectory_seed(0, i) for i in range(1000)]
    assert len(set(seeds)) == 1000
    assert trajectory_seed(0, 5) == seeds[5] and trajectory_seed(1, 5) != seeds[5]


def test_bad_sampler_settings_are_refused(debug_base, debug_recipe):
    with pytest.raises(ValueError):
        run(debug_base, dataclasses.replace(debug_recipe.sampler, steps=0))
    with pytest.raises(ValueError):
        run(debug_base, dataclasses.replace(debug_recipe.sampler, steps=debug_base.num_tokens + 1))


def test_head_at_masked_positions_only_samples_what_the_full_head_does(debug_base, debug_recipe, tmp_path):
    """Policies may leave the head to the sampler, which runs it only where it reads logits, with
    each position's own head (MaskGIT's bias is per position)."""
    from migmcut.base import load_base, maskgit
    from migmcut.policies import FullPolicy, Proposal
    from migmcut.recipe import load_recipe

    class FeaturesOnly(FullPolicy):
        def step(self, base, state):
            return Proposal("full", None, super().step(base, state).features)

    sets = maskgit.write_random_checkpoint(tmp_path)
    recipe = load_recipe("maskgit-imagenet512", [f"{k}={v}" for k, v in sets.items()] + ["sampler.steps=6"])
    with torch.no_grad():  # a bias that differs by position, as trained MaskGIT weights have
        mg = load_base(recipe.base)
        mg.net.bias.normal_(0, 3)
    for base, config, conditions in ((debug_base, debug_recipe.sampler, ["a large red circle"] * 3),
                                     (mg, recipe.sampler, [1, 2, 3])):
        full = sample(base, conditions, [0, 1, 2], config)
        lazy = sample(base, conditions, [0, 1, 2], config, policy=FeaturesOnly())
        assert torch.equal(full.tokens, lazy.tokens) and torch.equal(full.order, lazy.order)
