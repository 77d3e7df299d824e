"""The one interface every base-model adapter implements.

A base model is a masked token model over an image grid of L = H*W tokens from a codebook of
K entries. The sampler only ever talks to it through this class:

    cond = base.encode_conditions(["a red circle"])        # (B, ...) condition tensor
    null = base.null_conditions(B)                        # the CFG unconditional branch
    logits, features = base.forward(tokens, cond)         # (B, L, K), (B, L, D)
    logits = base.head(features)                          # the output head alone
    images = base.decode(tokens)                          # uint8 (B, H_img, W_img, 3)

`tokens` hold image token ids in [0, K) and `mask_id` (== K) where a position is still masked.
`embed_tokens`, `embed_positions` and `embed_conditions` expose the frozen embeddings the
shortcut reads new tokens and prompts with. `fingerprint` identifies config + weights: stores
and checkpoints record it and refuse to pair with another base.
"""

from __future__ import annotations

import hashlib
import json

import torch


class BaseModel(torch.nn.Module):
    codebook_size: int
    mask_id: int
    grid: tuple[int, int]
    feature_dim: int
    fingerprint: str

    @property
    def num_tokens(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def encode_conditions(self, conditions: list) -> torch.Tensor:
        raise NotImplementedError

    def null_conditions(self, n: int) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, tokens: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def head(self, features: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def embed_positions(self, positions: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def embed_conditions(self, cond: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def grid_position_embeddings(self) -> torch.Tensor:
        """(L, D): the position embeddings of every grid position in raster order (the shortcut's queries)."""
        return self.embed_positions(torch.arange(self.num_tokens, device=self.device))

    def condition_mask(self, cond: torch.Tensor) -> torch.Tensor | None:
        """(B, P) bool: the condition positions the shortcut may attend to (None: all of them)."""
        return None

    def decode(self, tokens: torch.Tensor):
        raise NotImplementedError


# config entries that say where or how weights were loaded, not what they are
_VOLATILE = ("transformers_version", "torch_dtype", "dtype")


def _stable(obj):
    """`obj` without private keys (`_name_or_path`, `_diffusers_version`, ...) and load details."""
    if isinstance(obj, dict):
        return {k: _stable(v) for k, v in obj.items() if not str(k).startswith("_") and k not in _VOLATILE}
    if isinstance(obj, (list, tuple)):
        return [_stable(v) for v in obj]
    return obj


def fingerprint_of(meta: dict, module: torch.nn.Module) -> str:
    """sha256 over a JSON description and every parameter/buffer (name, shape, bytes).

    Floating tensors are hashed as bfloat16, so the same weights loaded in fp32 or bf16 (a store
    recorded on a GPU, a shortcut trained on a CPU) have the same fingerprint; load paths and
    library versions in `meta` are left out, so it is the same on every machine and checkout.
    """
    h = hashlib.sha256(json.dumps(_stable(meta), sort_keys=True, default=str).encode())
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu()
        t = (t.to(torch.bfloat16) if t.is_floating_point() else t).contiguous()
        h.update(f"{name}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]
