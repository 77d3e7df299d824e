"""The one runner: a run is resolved once (method, full steps, shortcut), refused in one line when it
cannot be, and its batches sample what one batch of everything samples."""

import dataclasses

import pytest
import torch

from migmcut.errors import UserError
from migmcut.runner import resolve_run
from migmcut.shortcut import Shortcut, ShortcutConfig

PROMPTS = ["a large red circle", "a small blue square left of a large green triangle", "a green triangle"]


@pytest.fixture(scope="module")
def sampler(debug_recipe):
    return dataclasses.replace(debug_recipe.sampler, steps=8)


@pytest.fixture(scope="module")
def shortcut(debug_base):
    torch.manual_seed(0)
    return Shortcut(ShortcutConfig(feature_dim=debug_base.feature_dim, heads=2))


def test_a_run_is_resolved_once_with_the_methods_placement_and_the_shortcut_on_the_bases_dtype(
        debug_base, sampler, shortcut):
    run = resolve_run(debug_base, sampler, "shortcut", budget=3, shortcut=shortcut.double())
    assert run.full_steps == [0, 3, 5] and run.method.name == "shortcut"
    assert next(run.shortcut.parameters()).dtype == next(debug_base.parameters()).dtype
    assert run.counts == sampler.check(debug_base.num_tokens) and sum(run.counts) == debug_base.num_tokens
    assert resolve_run(debug_base, sampler, "vanilla").full_steps == list(range(8))
    assert resolve_run(debug_base, sampler, "cache", full_steps=[0, 2, 7]).full_steps == [0, 2, 7]
    assert run.policy() is not run.policy()  # a fresh policy per batch


def test_batches_sample_what_one_batch_samples(debug_base, sampler, shortcut):
    run = resolve_run(debug_base, sampler, "shortcut", budget=3, shortcut=shortcut)
    seeds = [11, 12, 13]
    whole = run.sample(PROMPTS, seeds)
    parts = list(run.batches(PROMPTS, seeds, batch_size=2))
    assert [lo for lo, _ in parts] == [0, 2]
    assert torch.equal(torch.cat([r.tokens for _, r in parts]), whole.tokens)
    assert all(r.counts == {"full": 3, "shortcut": 5} for _, r in parts)


@pytest.mark.parametrize("method, kwargs, words", [
    ("vanilla", {"budget": 3}, "budget=3 needs an accelerated method"),
    ("cache", {}, "method=cache needs budget=B"),
    ("shortcut", {"budget": 3}, "method=shortcut needs a shortcut checkpoint"),
    ("cache", {"full_steps": [1, 3]}, "need 2 increasing steps below 8, starting at 0"),
    ("cache", {"full_steps": [0, 3, 3]}, "need 3 increasing steps"),
    ("recap", {"budget": 9}, "needs a budget between 4 and 8 at 8 steps, got 9"),
    ("nope", {}, "method='nope': choose one of vanilla, cache, shortcut"),
])
def test_a_run_that_cannot_be_is_one_line(debug_base, sampler, method, kwargs, words):
    with pytest.raises(UserError, match=words):
        resolve_run(debug_base, sampler, method, **kwargs)
