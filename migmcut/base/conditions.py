"""Encoded conditions: what an adapter's `encode_conditions` returns and its `forward` reads.

A batch of conditions is one or more named tensors that share their first (row) dimension: a
prompt's token ids (tiny-shapes, Lumina-DiMOO), a class id (MaskGIT), or aMUSEd's text hidden
states, pooled text embedding and micro-conditions. The sampler and the trainer never look
inside; they only

    cond.cat(base.null_conditions(len(cond)))   # pair with CFG's unconditional branch
    cond.where(uncond_rows, null)               # pick a branch per row (training pairs)
    len(cond), cond[rows], cond.to(device)

and hand the result back to the adapter (`forward`, `embed_conditions`, `condition_mask`).
"""

from __future__ import annotations

import torch


class Conditions:
    """Named tensors with one row per sequence; an adapter names and reads them."""

    def __init__(self, **tensors: torch.Tensor):
        if not tensors:
            raise ValueError("Conditions need at least one tensor")
        rows = {t.shape[0] for t in tensors.values()}
        if len(rows) != 1:
            raise ValueError(f"every condition tensor needs the same number of rows, got "
                             f"{ {k: tuple(t.shape) for k, t in tensors.items()} }")
        self.tensors = tensors

    def __getitem__(self, key):
        """`cond["ids"]`: one named tensor; `cond[2:4]` or `cond[index_tensor]`: those rows."""
        if isinstance(key, str):
            return self.tensors[key]
        return Conditions(**{k: t[key] for k, t in self.tensors.items()})

    def __len__(self) -> int:
        return next(iter(self.tensors.values())).shape[0]

    def __repr__(self) -> str:
        return f"Conditions({', '.join(f'{k}={tuple(t.shape)}' for k, t in self.tensors.items())})"

    def _same_names(self, other: Conditions) -> None:
        if self.tensors.keys() != other.tensors.keys():
            raise ValueError(f"conditions {sorted(self.tensors)} and {sorted(other.tensors)} do not pair")

    def cat(self, other: Conditions) -> Conditions:
        """This batch's rows, then `other`'s (under CFG: conditional rows first, then the null ones)."""
        self._same_names(other)
        return Conditions(**{k: torch.cat([t, other[k].to(t.device)]) for k, t in self.tensors.items()})

    def where(self, take_other: torch.Tensor, other: Conditions) -> Conditions:
        """Row i from `other` where `take_other[i]` (bool, (R,)), else from this batch."""
        self._same_names(other)
        out = {}
        for k, t in self.tensors.items():
            pick = take_other.to(t.device).view(-1, *([1] * (t.dim() - 1)))
            out[k] = torch.where(pick, other[k].to(t.device), t)
        return Conditions(**out)

    def to(self, device: torch.device | str) -> Conditions:
        return Conditions(**{k: t.to(device) for k, t in self.tensors.items()})
