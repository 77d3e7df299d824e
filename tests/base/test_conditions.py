"""Conditions are the adapter's own tensors: the sampler and the trainer only pair, select and move them."""

import pytest
import torch

from migmcut.base.conditions import Conditions
from migmcut.shortcut import ShortcutInputs, grid_positions, position_table


def test_pairs_and_selects_every_named_tensor_by_row():
    # aMUSEd-like: three tensors of different ranks per row
    cond = Conditions(hidden=torch.ones(2, 3, 4), pooled=torch.ones(2, 4), micro=torch.ones(2, 5))
    null = Conditions(hidden=torch.zeros(2, 3, 4), pooled=torch.zeros(2, 4), micro=torch.zeros(2, 5))
    both = cond.cat(null)
    assert len(both) == 4 and both["hidden"].shape == (4, 3, 4)
    assert both["pooled"][:2].eq(1).all() and both["pooled"][2:].eq(0).all()
    picked = cond.where(torch.tensor([False, True]), null)
    for name in ("hidden", "pooled", "micro"):
        assert picked[name][0].eq(1).all() and picked[name][1].eq(0).all()
    assert len(both[1:3]) == 2 and torch.equal(both[torch.tensor([3])]["micro"], null["micro"][1:])


def test_refuses_what_does_not_pair():
    with pytest.raises(ValueError, match="same number of rows"):
        Conditions(a=torch.zeros(2, 1), b=torch.zeros(3, 1))
    with pytest.raises(ValueError, match="do not pair"):
        Conditions(a=torch.zeros(2, 1)).cat(Conditions(b=torch.zeros(2, 1)))


def test_a_base_without_absolute_positions_gets_the_shortcuts_own(debug_base, monkeypatch):
    """RoPE bases (Lumina-DiMOO) return no position embeddings; the shortcut's fallback is a fixed
    sinusoid table at the scale of the base's image-token embeddings, distinct per position."""
    own = debug_base.embed_positions(torch.arange(debug_base.num_tokens))
    torch.testing.assert_close(grid_positions(debug_base), own)  # a base with its own keeps them
    monkeypatch.setattr(debug_base, "embed_positions", lambda positions: None)
    table = grid_positions(debug_base)
    assert table.shape == own.shape and torch.unique(table, dim=0).shape[0] == debug_base.num_tokens
    codes = debug_base.embed_tokens(torch.arange(debug_base.codebook_size))
    torch.testing.assert_close(table.pow(2).mean().sqrt() / codes.pow(2).mean().sqrt(),
                               position_table(16, 32).pow(2).mean().sqrt(), rtol=0.05, atol=0)
    ids, pos = torch.tensor([[1, 2]]), torch.tensor([[0, 5]])
    got = ShortcutInputs(debug_base).tokens(ids, pos, torch.ones(1, 2, dtype=torch.bool), torch.tensor([0.5]))
    torch.testing.assert_close(got["new_emb"], debug_base.embed_tokens(ids) + table[pos])
