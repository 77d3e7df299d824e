"""The recap, mlcache and hybrid policies: their schedules as the reference code places full steps,
and what each step evaluates and fixes."""

import math

import pytest
import torch

from migmcut.methods.hybrid import HybridPolicy
from migmcut.methods.mlcache import MLCachePolicy, mlcache_schedule
from migmcut.methods.recap import RecapPolicy, recap_schedule
from migmcut.policies import Policy, Proposal
from migmcut.sampler import sample
from migmcut.schedule import tokens_per_step
from migmcut.shortcut import Shortcut, ShortcutConfig

PROMPTS = ["a large red circle", "a small blue square left of a large green triangle", "a green triangle"]
SEEDS = [5, 6, 7]


@pytest.mark.parametrize("steps, prefix, full", [(32, 12, 22), (24, 10, 17), (20, 10, 15), (16, 8, 12), (16, 0, 8)])
def test_recap_schedule_gives_the_published_runs(steps, prefix, full):
    """ReCAP's MaskGIT script (N, P) with K = 1 local step: P full steps, then full/local pairs."""
    assert recap_schedule(steps, full, local=1) == list(range(prefix)) + list(range(prefix, steps, 2))


def test_recap_and_mlcache_schedules_check_their_budgets():
    assert recap_schedule(16, 4, local=3) == [0, 4, 8, 12]
    assert recap_schedule(16, 16, local=1) == list(range(16))
    for bad in (7, 17):
        with pytest.raises(ValueError, match="budget between 8 and 16"):
            recap_schedule(16, bad, local=1)
    # Lumina-DiMOO's defaults at its 64 steps: warm-up s <= 19, then every 5th step: 28 full
    assert mlcache_schedule(64) == list(range(20)) + list(range(24, 64, 5))
    assert mlcache_schedule(16) == [0, 1, 2, 3, 4, 9, 14]
    for budget in range(4, 17):
        full = mlcache_schedule(16, budget=budget)
        assert len(full) == budget and full[0] == 0
    with pytest.raises(ValueError, match="budget between 4 and 16"):
        mlcache_schedule(16, budget=3)


def _calls(base):
    calls = {"full": 0, "partial": [], "context": []}
    full, partial = base.forward_with_cache, base.partial_forward

    def counted_full(*a, **k):
        calls["full"] += 1
        return full(*a, **k)

    def counted_partial(tokens, cond, positions, cache, update=False, context=False):
        logits, features = partial(tokens, cond, positions, cache, update, context)
        calls["partial"].append((positions.clone(), update))
        calls["context"].append(context)
        calls["features"] = features
        return logits, features

    base.forward_with_cache, base.partial_forward = counted_full, counted_partial
    return calls


@pytest.fixture
def base(debug_base):
    yield debug_base
    for name in ("forward_with_cache", "partial_forward"):
        debug_base.__dict__.pop(name, None)


def test_recap_local_steps_fix_the_next_chunks_of_the_full_steps_ranking(base, debug_recipe):
    cfg = debug_recipe.sampler
    counts = tokens_per_step(base.num_tokens, cfg.steps, cfg.schedule)
    full = recap_schedule(cfg.steps, 4, local=1)
    calls, events = _calls(base), []
    result = sample(base, PROMPTS, SEEDS, cfg, policy=RecapPolicy(full, counts), observers=(events.append,))
    assert result.counts == {"full": 4, "recap": cfg.steps - 4} and calls["full"] == 4
    assert (result.tokens != base.mask_id).all()
    for t in range(cfg.steps):
        if t in full:
            continue
        ranked = events[t - 1].ranked  # the group's full step is the one before (K = 1)
        group = ranked[:, : counts[t - 1] + counts[t]]
        positions, update = calls["partial"][full.index(t - 1)]
        assert not update and torch.equal(positions, group.repeat(2, 1))  # every group position, both branches
        assert calls["context"][full.index(t - 1)]  # and the prompt, as ReCAP recomputes its context token
        chunk = ranked[:, counts[t - 1] : counts[t - 1] + counts[t]]
        assert torch.equal(events[t].fixed, torch.zeros_like(events[t].fixed).scatter_(1, chunk, True))


def test_mlcache_recomputes_the_lowest_max_logit_tenth_writing_its_keys_back(base, debug_recipe):
    cfg = debug_recipe.sampler
    full = mlcache_schedule(cfg.steps)  # 8 steps: warm-up s <= 2, then s = 7
    assert full == [0, 1, 2, 7]
    calls, lowest = _calls(base), []

    class Watched(MLCachePolicy):  # the max logit per position and branch that each partial step ranks
        def step(self, base, state):
            if state.t not in self.full_steps:
                lowest.append(self.logits.max(-1).values.clone())
            return super().step(base, state)

    result = sample(base, PROMPTS, SEEDS, cfg, policy=Watched(full, cache_ratio=0.9))
    assert result.counts == {"full": 4, "mlcache": 4} and calls["full"] == 4
    n = math.floor(0.1 * (base.num_tokens - 1)) + 1  # what torch.quantile's 0.1 quantile leaves at or below it
    for (positions, update), maxima in zip(calls["partial"], lowest, strict=True):
        assert update and positions.shape == (6, n)  # each branch of each image on its own
        threshold = maxima.sort(-1).values[:, n - 1 : n]
        assert (maxima.gather(1, positions) <= threshold).all()
    assert (result.tokens != base.mask_id).all()


class Pinned(Policy):
    """A policy that proposes the base's own logits, and a refine that makes token 0 certain."""

    def __init__(self, factor):
        self.factor, self.seen = factor, []

    def step(self, base, state):
        logits, features = base(state.tokens.repeat(2, 1), state.cond)
        if state.t == 0:
            return Proposal("full", logits, features)

        def refine(where):
            self.seen.append(where)
            exact = torch.full((2 * where.shape[0], where.shape[1], base.codebook_size), -30.0)
            exact[..., 0] = 30.0
            return exact

        return Proposal("hybrid", logits, features, refine=refine, refine_factor=self.factor)


def test_a_refined_step_fixes_only_candidates_and_draws_them_from_the_exact_logits(base, debug_recipe):
    cfg = debug_recipe.sampler
    counts = tokens_per_step(base.num_tokens, cfg.steps, cfg.schedule)
    policy, events = Pinned(1.5), []
    result = sample(base, PROMPTS, SEEDS, cfg, policy=policy, observers=(events.append,))
    for t in range(1, cfg.steps):
        where = policy.seen[t - 1]
        masked_before = (events[t - 1].tokens == base.mask_id).sum(1)[0].item()
        assert where.shape == (3, min(masked_before, max(counts[t], math.ceil(1.5 * counts[t]))))
        fixed = events[t].fixed
        assert fixed.gather(1, where).sum(1).eq(counts[t]).all()  # every fixed position is a candidate
        assert (result.tokens[fixed] == 0).all()


def test_hybrid_evaluates_candidates_and_the_tokens_just_fixed_and_carries_exact_features(base, debug_recipe):
    cfg = debug_recipe.sampler
    counts = tokens_per_step(base.num_tokens, cfg.steps, cfg.schedule)
    shortcut = Shortcut(ShortcutConfig(feature_dim=base.feature_dim, heads=2)).eval()
    calls, events, runs = _calls(base), [], []
    policy = HybridPolicy([0, 4], shortcut, candidates=2.0, refresh_new=True)
    hook = shortcut.register_forward_hook(lambda *a: runs.append(1))
    try:
        result = sample(base, PROMPTS, SEEDS, cfg, policy=policy, observers=(events.append,))
    finally:
        hook.remove()
    # every skipped step runs the shortcut and a partial evaluation: both are counted, as they ran
    assert len(runs) == len(calls["partial"]) == cfg.steps - 2 and calls["full"] == 2
    assert result.counts == {"full": 2, "shortcut": cfg.steps - 2, "hybrid": cfg.steps - 2}
    assert not any(calls["context"])  # the prompt's keys/values stay those of the full step unless asked
    hybrid_steps = [t for t in range(cfg.steps) if t not in (0, 4)]
    for (positions, update), t in zip(calls["partial"], hybrid_steps):
        assert update
        fresh = events[t - 1].fixed.nonzero()[:, 1].view(3, -1)
        assert torch.equal(positions[:3, : counts[t - 1]], fresh)  # the tokens fixed at the step before, first
        assert positions.shape[1] - counts[t - 1] >= counts[t]
        fixed = events[t].fixed.nonzero()[:, 1].view(3, -1)
        assert torch.isin(fixed, positions[:3, counts[t - 1]:]).all()
    # the map the shortcut carries on holds the exact features where the last step evaluated
    positions, _ = calls["partial"][-1]
    carried = policy.features.gather(1, positions[..., None].expand(-1, -1, base.feature_dim))
    assert torch.equal(carried, calls["features"].to(carried.dtype))
    assert (result.tokens != base.mask_id).all()


def test_partial_policies_need_a_base_with_partial_evaluation():
    from migmcut.base.interface import BaseModel
    from migmcut.errors import UserError

    with pytest.raises(UserError, match="no partial evaluation"):
        BaseModel().forward_with_cache(None, None)


def test_hybrid_context_recomputes_the_prompt_positions_too(base, debug_recipe):
    shortcut = Shortcut(ShortcutConfig(feature_dim=base.feature_dim, heads=2)).eval()
    calls = _calls(base)
    sample(base, PROMPTS, SEEDS, debug_recipe.sampler, policy=HybridPolicy([0], shortcut, context=True))
    assert calls["context"] and all(calls["context"])
