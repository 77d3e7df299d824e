import dataclasses

import torch

from migmcut.placement import budget_schedule
from migmcut.methods.shortcut import BudgetPolicy
from migmcut.sampler import sample
from migmcut.shortcut import Shortcut, ShortcutConfig

PROMPTS = ["a large red circle", "a small blue square left of a large green triangle"]
SEEDS = [3, 4]


def test_full_budget_equals_vanilla(debug_base, debug_recipe):
    cfg = debug_recipe.sampler
    vanilla = sample(debug_base, PROMPTS, SEEDS, cfg)
    budgeted = sample(debug_base, PROMPTS, SEEDS, cfg, policy=BudgetPolicy(budget_schedule(cfg.steps, cfg.steps)))
    assert torch.equal(vanilla.tokens, budgeted.tokens)


def test_cache_calls_the_base_only_at_budget_steps(debug_base, debug_recipe):
    cfg = debug_recipe.sampler
    calls = []
    hook = debug_base.register_forward_hook(lambda *a: calls.append(1))
    try:
        result = sample(debug_base, PROMPTS, SEEDS, cfg, policy=BudgetPolicy(budget_schedule(cfg.steps, 3)))
    finally:
        hook.remove()
    assert len(calls) == 3
    assert result.counts == {"full": 3, "cache": cfg.steps - 3}
    assert (result.tokens != debug_base.mask_id).all()


def test_an_untrained_shortcut_is_the_cache_and_a_trained_one_is_not(debug_base, debug_recipe):
    cfg = dataclasses.replace(debug_recipe.sampler)
    full = budget_schedule(cfg.steps, 3)
    shortcut = Shortcut(ShortcutConfig(feature_dim=debug_base.feature_dim, heads=2)).eval()
    cached = sample(debug_base, PROMPTS, SEEDS, cfg, policy=BudgetPolicy(full))
    short = sample(debug_base, PROMPTS, SEEDS, cfg, policy=BudgetPolicy(full, shortcut))
    assert short.counts == {"full": 3, "shortcut": cfg.steps - 3}
    assert torch.equal(cached.tokens, short.tokens)  # zero-initialised output: identity
    with torch.no_grad():
        for p in shortcut.parameters():
            p.add_(0.5 * torch.randn_like(p))
    moved = sample(debug_base, PROMPTS, SEEDS, cfg, policy=BudgetPolicy(full, shortcut))
    assert not torch.equal(cached.tokens, moved.tokens)
