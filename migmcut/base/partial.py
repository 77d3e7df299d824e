"""Partial evaluation: re-run a base on chosen positions against cached keys/values.

ReCAP (Liu et al. 2025) and Lumina-DiMOO's ML-Cache re-evaluate only some token positions: at a
full step every layer's attention keys/values are kept (`KVCache`); at a partial step the chosen
positions' hidden states are recomputed from the current tokens, layer by layer, and their queries
attend to the cached K/V of every other position (frozen at the full step: the other image tokens
and, for sequence models, the prompt) plus their own fresh K/V.

`run_layers` is the one loop every adapter shares. An adapter describes its transformer through a
few hooks (see `BaseModel` in `interface.py`): `partial_sequence` (ids, position ids, key mask),
`embed_rows`, `partial_blocks`, `block_qkv` (queries/keys/values of some rows, rotary embedding
applied), `block_out` (everything after the attention: output projection, residuals, norms, MLP)
and `final_norm`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F


class Sequence(NamedTuple):
    """One batch of base input sequences: ids (B, T), position ids (B, T) as the embeddings / rotary
    embedding read them, and the keys each row may attend to ((B, 1, 1, T) bool, None: all)."""

    ids: torch.Tensor
    pos: torch.Tensor
    mask: torch.Tensor | None


@dataclass
class KVCache:
    """Every layer's attention keys and values over the whole sequence, from one full step.

    keys[i], values[i]: (B, kv_heads, T, head_dim), keys after the rotary embedding where the base
    has one. Under CFG the batch holds every branch (the rows the sampler passed to the base).
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]

    @property
    def batch(self) -> int:
        return self.keys[0].shape[0]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)


def run_layers(model, x: torch.Tensor, pos: torch.Tensor, rows: torch.Tensor | None, mask: torch.Tensor | None,
               cache: KVCache | None = None, update: bool = False) -> tuple[torch.Tensor, KVCache | None]:
    """Run `model`'s transformer blocks on hidden states `x` (B, t, D).

    Without `cache` (a full pass: x covers the whole sequence) it returns the output and a new
    KVCache. With one, x holds only the sequence `rows` (B, t) (distinct per batch row), whose
    fresh K/V replace the cached ones, in a copy (`update` False: ReCAP) or in the cache itself
    (`update` True: ML-Cache's write-back), before their queries attend over all T keys.
    `pos` (B, t) are x's position ids; `mask` the key mask of the whole sequence.
    """
    keys, values = [], []
    for i, block in enumerate(model.partial_blocks()):
        q, k, v = model.block_qkv(block, x, pos)
        if cache is None:
            keys.append(k)
            values.append(v)
        else:
            index = rows[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[3])
            scatter = torch.Tensor.scatter_ if update else torch.Tensor.scatter
            k, v = scatter(cache.keys[i], 2, index, k), scatter(cache.values[i], 2, index, v)
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=q.shape[1] != k.shape[1])
        x = model.block_out(block, x, attn.transpose(1, 2).flatten(2))
    return x, (KVCache(keys, values) if cache is None else None)


def split_heads(t: torch.Tensor, head_dim: int) -> torch.Tensor:
    """(B, t, heads * head_dim) -> (B, heads, t, head_dim)."""
    return t.unflatten(-1, (-1, head_dim)).transpose(1, 2)
