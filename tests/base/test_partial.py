"""Partial evaluation (ReCAP / ML-Cache): chosen positions re-run against the other positions' cached K/V."""

import pytest
import torch
from test_dimoo import LLADA

from migmcut.base import load_base
from migmcut.base import dimoo, maskgit
from migmcut.base.interface import BaseModel
from migmcut.errors import UserError
from migmcut.recipe import load_recipe


def _tiny(tmp_path):
    base = load_base(load_recipe("debug").base)
    return base, lambda p: p + base.prompt_length, base.prompt_length + 256, ["a large red circle", "a blue square"], base.mlm.bert.encoder.layer


def _maskgit(tmp_path):
    sets = maskgit.write_random_checkpoint(tmp_path)
    base = load_base(load_recipe("maskgit-imagenet512", [f"{k}={v}" for k, v in sets.items()]).base)
    return base, lambda p: p, 16 + 1, [3, 7], [attn for attn, _ in base.net.transformer.layers]  # + class token


def _dimoo(tmp_path, **arch):
    sets = dimoo.write_random_checkpoint(tmp_path, words=["a", "red", "fox", "in", "snow"], **arch)
    sets |= {"base.height": 8, "base.width": 8, "base.max_prompt_tokens": 32}
    base = load_base(load_recipe("dimoo-t2i", [f"{k}={v}" for k, v in sets.items()]).base)
    P, (h, w) = base.prompt_length, base.grid  # prompt [BOA] [BOI] (w image tokens [NEWLINE]) x h [EOI] [EOA]
    return base, lambda p: P + 2 + (p // w) * (w + 1) + p % w, P + 2 + h * (w + 1) + 2, ["a red fox", "fox"], base.net.layers


# each: (base, grid position -> sequence index, sequence length, two conditions, the library's layers)
ADAPTERS = {"tiny-shapes": _tiny, "maskgit": _maskgit, "dimoo": _dimoo,
            "dimoo-gqa": lambda tmp_path: _dimoo(tmp_path, n_heads=4, n_kv_heads=2)}  # 2 query heads per K/V head


@pytest.fixture(scope="module", params=list(ADAPTERS))
def case(request, tmp_path_factory):
    base, seq_index, length, conditions, layers = ADAPTERS[request.param](tmp_path_factory.mktemp(request.param))
    assert base.supports_partial
    # CFG as the sampler runs it: conditional rows, then the null branch
    cond = base.encode_conditions(conditions).cat(base.null_conditions(2))
    g = torch.Generator().manual_seed(0)
    L, K = base.num_tokens, base.codebook_size
    old = torch.randint(0, K, (4, L), generator=g)
    old[torch.rand(4, L, generator=g) < 0.6] = base.mask_id
    positions = torch.stack([torch.randperm(L, generator=g)[:5] for _ in range(4)])  # distinct, per row
    new = old.clone()
    picked = old.gather(1, positions)
    new.scatter_(1, positions, torch.where(picked == base.mask_id, 0, picked + 1) % K)  # every one changes
    return base, seq_index, length, list(layers), cond, old, new, positions


def _at(x, positions):
    return x.gather(1, positions[..., None].expand(-1, -1, x.shape[-1]))


def frozen_reference(base, layers, cond, old, new, rows):
    """The library forward on `new` where, at every layer, the input hidden states outside sequence
    `rows` are those of the forward on `old`: the semantics the cached keys/values stand for."""
    seen = []
    hooks = [m.register_forward_pre_hook(lambda m, args: seen.append(args[0])) for m in layers]
    base(old, cond)
    for h in hooks:
        h.remove()
    keep = torch.zeros(seen[0].shape[:2], dtype=torch.bool).scatter_(1, rows, True)[..., None]

    def freeze(i):
        return lambda m, args: (torch.where(keep, args[0], seen[i]), *args[1:])

    hooks = [m.register_forward_pre_hook(freeze(i)) for i, m in enumerate(layers)]
    try:
        return base(new, cond)
    finally:
        for h in hooks:
            h.remove()


def test_full_step_with_cache_and_partial_over_all_positions_equal_forward(case):
    base, _, _, _, cond, old, _, _ = case
    logits, features = base(old, cond)
    l_cache, f_cache, cache = base.forward_with_cache(old, cond)
    torch.testing.assert_close(l_cache, logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(f_cache, features, atol=1e-4, rtol=1e-4)
    every = torch.stack([torch.randperm(base.num_tokens) for _ in range(4)])  # all positions, shuffled
    l_part, f_part = base.partial_forward(old, cond, every, cache)
    torch.testing.assert_close(l_part, _at(logits, every), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(f_part, _at(features, every), atol=1e-4, rtol=1e-4)


def test_partial_on_changed_tokens_attends_to_the_cached_context(case):
    base, seq_index, _, layers, cond, old, new, positions = case
    _, _, cache = base.forward_with_cache(old, cond)
    logits, features = base.partial_forward(new, cond, positions, cache)
    assert logits.shape == (4, 5, base.codebook_size) and features.shape == (4, 5, base.feature_dim)
    ref_logits, ref_features = frozen_reference(base, layers, cond, old, new, seq_index(positions))
    torch.testing.assert_close(features, _at(ref_features, positions), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(logits, _at(ref_logits, positions), atol=1e-4, rtol=1e-4)
    # neither a fresh full forward (the context is frozen) nor the cached step (the tokens are new)
    for other in (base(new, cond)[1], base(old, cond)[1]):
        assert (features - _at(other, positions)).abs().amax() > 1e-2
    with pytest.raises(ValueError, match="do not match"):
        base.partial_forward(new[:2], cond[:2], positions[:2], cache)


def test_partial_with_context_over_all_positions_is_a_fresh_forward_and_write_back_updates_the_cache(case):
    """Recomputing every image position and the context (prompt, class or special tokens) leaves no
    cached input: it is the forward on the new tokens, however stale the cache. Writing back makes
    the cache that forward's."""
    base, _, _, _, cond, old, new, positions = case
    logits, features = base(new, cond)
    _, _, cache = base.forward_with_cache(old, cond)
    every = torch.stack([torch.randperm(base.num_tokens) for _ in range(4)])
    l_part, f_part = base.partial_forward(new, cond, every, cache, context=True, update=True)
    torch.testing.assert_close(f_part, _at(features, every), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(l_part, _at(logits, every), atol=1e-4, rtol=1e-4)
    _, _, fresh = base.forward_with_cache(new, cond)
    for mine, want in zip(cache.keys + cache.values, fresh.keys + fresh.values):
        torch.testing.assert_close(mine, want, atol=1e-4, rtol=1e-4)
    # without write-back the cache is left as the full step made it
    _, _, cache = base.forward_with_cache(old, cond)
    before = [k.clone() for k in cache.keys]
    base.partial_forward(new, cond, positions, cache)
    assert all(torch.equal(a, b) for a, b in zip(before, cache.keys))


def test_kv_cache_bytes_match_the_cache_tensors(case):
    base, _, length, layers, cond, old, _, _ = case
    _, _, cache = base.forward_with_cache(old, cond)
    assert len(cache.keys) == len(layers) and cache.keys[0].shape[2] == length
    assert cache.nbytes == base.kv_cache_bytes_per_image(branches=4)  # 4 rows: 2 images x 2 CFG branches
    assert base.kv_cache_bytes_per_image(torch.bfloat16, branches=2) == cache.nbytes // 4


def test_kv_cache_bytes_at_full_size():
    """The figures in docs/real-models.md: bf16, 2 CFG branches per image."""
    cfg = load_recipe("maskgit-imagenet512").base
    with torch.device("meta"):
        net = maskgit.MaskGITBase.build_transformer(cfg)
    mg = maskgit.MaskGITBase(net, torch.nn.Module(), cfg.grid, {})
    assert mg.kv_cache_bytes_per_image(torch.bfloat16, branches=2) == 24 * 2 * 1025 * 768 * 2 * 2  # 151 MB
    with torch.device("meta"):
        net = dimoo.BidirectionalLlama(dimoo.llama_config(LLADA))
    dm = dimoo.DiMOOBase(net, torch.nn.Module(), None, load_recipe("dimoo-t2i").base, {})
    # 256 prompt + [BOA] [BOI] + 64 rows of 64 tokens and a newline + [EOI] [EOA] = 4420 positions
    assert dm.kv_cache_bytes_per_image(torch.bfloat16, branches=2) == 32 * 2 * 4420 * 4096 * 2 * 2  # 4.63 GB
    print(f"KV cache per image, bf16, CFG: maskgit-512 {mg.kv_cache_bytes_per_image(torch.bfloat16, 2) / 1e6:.1f} MB, "
          f"dimoo-1024 {dm.kv_cache_bytes_per_image(torch.bfloat16, 2) / 1e9:.2f} GB")


def test_a_base_without_the_capability_is_one_clear_user_error():
    class Plain(BaseModel):
        grid = (2, 2)

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

    base, tokens = Plain(), torch.zeros(1, 4, dtype=torch.long)
    for call in (lambda: base.forward_with_cache(tokens, tokens), lambda: base.kv_cache_bytes_per_image(),
                 lambda: base.partial_forward(tokens, tokens, tokens, None)):
        with pytest.raises(UserError) as err:
            call()
        assert "the Plain base has no partial evaluation" in str(err.value) and "\n" not in str(err.value)
