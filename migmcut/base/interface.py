"""The one interface every base-model adapter implements.

A base model is a masked token model over an image grid of L = H*W tokens from a codebook of
K entries. The sampler only ever talks to it through this class:

    cond = base.encode_conditions(["a red circle"])        # Conditions: named tensors, B rows
    cond = cond.cat(base.null_conditions(B))              # paired with CFG's unconditional branch
    logits, features = base.forward(tokens, cond)         # (B, L, K), (B, L, D)
    logits = base.head(features)                          # the output head alone
    images = base.decode(tokens)                          # uint8 (B, H_img, W_img, 3)

Partial evaluation (ReCAP, ML-Cache; adapters with `supports_partial`):

    logits, features, cache = base.forward_with_cache(tokens, cond)    # a full step that keeps K/V
    logits, features = base.partial_forward(tokens, cond, positions, cache)  # (B, n, K), (B, n, D)
    base.partial_forward(tokens, cond, positions, cache, update=True)  # ... writing their K/V back
    base.partial_forward(tokens, cond, positions, cache, context=True)  # ... the prompt recomputed too
    base.kv_cache_bytes_per_image(torch.bfloat16, branches=2)           # what one image's cache costs

`positions` (B, n) are distinct image-grid positions per row. Their hidden states are recomputed
from the current tokens, layer by layer, and attend to their fresh keys/values plus the cached
ones of every other position (other image tokens and prompt/condition positions, frozen at the
cached full step). The cache holds whatever batch the full step ran (under CFG: every branch).

`tokens` hold image token ids in [0, K) and `mask_id` (== K) where a position is still masked.
Conditions are the adapter's own (`conditions.Conditions`: whatever tensors its model takes); the
sampler and trainer only pair, select and move them. `embed_tokens`, `embed_positions` and
`embed_conditions` expose the frozen embeddings the shortcut reads new tokens and prompts with; a
base without absolute position embeddings (RoPE) returns None from `embed_positions`, and the
shortcut uses its own (`shortcut.grid_positions`). `fingerprint` identifies config + weights: stores
and checkpoints record it and refuse to pair with another base.
"""

from __future__ import annotations

import hashlib
import inspect
import json

import numpy as np
import torch

from migmcut.base.conditions import Conditions
from migmcut.base.partial import KVCache, Sequence, run_layers
from migmcut.errors import UserError


class BaseModel(torch.nn.Module):
    codebook_size: int
    mask_id: int
    grid: tuple[int, int]
    feature_dim: int
    fingerprint: str

    # what the rest of migmcut reads from the adapter class (migmcut.base.registry, docs/adapters.md)
    config_class: type | None = None  # the dataclass of the recipe's `base` section (with a `kind` field)
    condition_source = None  # a condition_sources.ConditionSource: what `record` draws (None: no recording)
    default_metrics: tuple[str, ...] = ("fid", "clip_score")  # what `bench` measures unless told

    @property
    def num_tokens(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def encode_conditions(self, conditions: list) -> Conditions:
        """Raw conditions (prompts, class ids) -> their encoded batch; UserError for one this base cannot take."""
        raise NotImplementedError

    def null_conditions(self, n: int) -> Conditions:
        """n rows of CFG's unconditional condition, pairable with `encode_conditions`' output."""
        raise NotImplementedError

    def forward(self, tokens: torch.Tensor, cond: Conditions) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def head(self, features: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_sequence(self, tokens: torch.Tensor, cond: Conditions) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`forward` plus the head's input at every row of the input sequence (B, T, D), whose image
        rows (`image_rows`) are `features`: what a shortcut that reads the whole sequence carries (the
        paper's released MaskGIT-Shortcut and DiMOO-Shortcut: `migmcut.base.released`)."""
        raise UserError(f"the {type(self).__name__} base does not expose its sequence features, "
                        "which the paper's released shortcuts read: use a shortcut trained with migmcut")

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def embed_positions(self, positions: torch.Tensor) -> torch.Tensor | None:
        """The base's absolute position embeddings (..., D) of grid positions; None for a base without
        them (the shortcut then uses its own)."""
        return None

    def embed_conditions(self, cond: Conditions) -> torch.Tensor | None:
        """(B, P, condition_dim): condition embeddings the shortcut attends to (None: it attends to none)."""
        return None

    @property
    def condition_dim(self) -> int:
        """The width of `embed_conditions`' vectors (the shortcut projects them where it is not feature_dim)."""
        return self.feature_dim

    def condition_mask(self, cond: Conditions) -> torch.Tensor | None:
        """(B, P) bool: the condition positions the shortcut may attend to (None: all of them)."""
        return None

    def decode(self, tokens: torch.Tensor):
        raise NotImplementedError

    # -- partial evaluation -------------------------------------------------------------------
    supports_partial: bool = False

    def forward_with_cache(self, tokens: torch.Tensor, cond: Conditions) -> tuple[torch.Tensor, torch.Tensor, KVCache]:
        """`forward` (same logits and features) that also returns every layer's K/V."""
        self.require_partial()
        seq = self.partial_sequence(tokens, cond)
        x, cache = run_layers(self, self.embed_rows(seq.ids, seq.pos), seq.pos, None, seq.mask)
        grid = torch.arange(self.num_tokens, device=tokens.device).expand(tokens.shape[0], -1)
        features = self.final_norm(_rows(x, self.image_rows(grid)))
        return self.head(features), features, cache

    def partial_forward(self, tokens: torch.Tensor, cond: Conditions, positions: torch.Tensor,
                        cache: KVCache, update: bool = False, context: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (B, n, K) and features (B, n, D) at grid `positions` (B, n), other positions from
        `cache`; with `update` the recomputed positions' K/V are written into `cache` (ML-Cache);
        with `context` the sequence's non-image positions (prompt, class or special tokens) are
        recomputed too (ReCAP recomputes its context token)."""
        self.require_partial()
        if positions.dim() != 2 or not positions.shape[0] == tokens.shape[0] == cache.batch:
            raise ValueError(f"positions {tuple(positions.shape)} and a cache of {cache.batch} rows "
                             f"do not match tokens {tuple(tokens.shape)}")
        seq = self.partial_sequence(tokens, cond)
        rows = self.image_rows(positions)
        if context:
            image = torch.zeros(seq.ids.shape[1], dtype=torch.bool, device=tokens.device)
            image[self.image_rows(torch.arange(self.num_tokens, device=tokens.device)[None])[0]] = True
            rows = torch.cat([(~image).nonzero()[:, 0].expand(rows.shape[0], -1), rows], 1)
        pos = _rows(seq.pos, rows)
        x, _ = run_layers(self, self.embed_rows(_rows(seq.ids, rows), pos), pos, rows, seq.mask, cache, update)
        features = self.final_norm(x[:, rows.shape[1] - positions.shape[1]:])
        return self.head_at(features, positions), features

    def kv_cache_bytes_per_image(self, dtype: torch.dtype | None = None, branches: int = 1) -> int:
        """Bytes of one image's KVCache in `dtype` (default: the model's); `branches=2` under CFG."""
        self.require_partial()
        layers, length, width = self.kv_layout()
        itemsize = (dtype or next(self.parameters()).dtype).itemsize
        return branches * layers * 2 * length * width * itemsize

    def head_at(self, features: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """`head` of features (B, n, D) that sit at grid `positions` (B, n) (for position-dependent heads)."""
        return self.head(features)

    def require_partial(self) -> None:
        if not self.supports_partial:
            raise UserError(f"the {type(self).__name__} base has no partial evaluation (forward_with_cache, "
                            f"partial_forward), which recap, mlcache and hybrid need: use vanilla, cache or shortcut")

    # the hooks `migmcut.base.partial.run_layers` drives; an adapter with `supports_partial` defines them
    def partial_sequence(self, tokens: torch.Tensor, cond: Conditions) -> Sequence:
        """The input sequence: ids, position ids and key mask."""
        raise NotImplementedError

    def image_rows(self, positions: torch.Tensor) -> torch.Tensor:
        """Grid positions (B, n) -> their indices in the input sequence (B, n)."""
        raise NotImplementedError

    def embed_rows(self, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """ids and position ids (B, t) -> the first block's input (B, t, D)."""
        raise NotImplementedError

    def partial_blocks(self) -> list:
        raise NotImplementedError

    def block_qkv(self, block, x: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q (B, heads, t, hd), k and v (B, kv_heads, t, hd) of the rows x (B, t, D) at position ids pos."""
        raise NotImplementedError

    def block_out(self, block, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """The block's output from its input x and its attention result (B, t, heads * hd)."""
        raise NotImplementedError

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def kv_layout(self) -> tuple[int, int, int]:
        """(layers, sequence length, kv_heads * head_dim) of the cache of one sequence."""
        raise NotImplementedError

    # -- attach: the shortcut inside a sampling loop migmcut did not write (`migmcut.attach`) -----
    # An adapter says where its model's network, features and head are; `migmcut.attach` does the
    # rest for every family alike. None from `attach_network`: the family does not support attach.
    budget_rounding: str = "half-up"  # where the family's reference puts B full steps (placement.ROUNDINGS)
    attach_reads_sequence: bool = False  # `attach_features` also gives the whole sequence (released shortcuts)

    def attach_network(self) -> torch.nn.Module | None:
        """The module a user's own loop calls once per step (and CFG branch, if it splits them)."""
        return None

    def attach_read(self, args: tuple, kwargs: dict) -> tuple[torch.Tensor, Conditions] | None:
        """One call of `attach_network()` -> its token state (R, L) (`mask_id` where masked) and its rows'
        conditions; None for a call that is no sampling step (it runs as it is); UserError for a call
        attach cannot read."""
        raise NotImplementedError

    def attach_feature_site(self) -> tuple[torch.nn.Module, bool]:
        """The submodule whose input (True) or output (False) holds the head's input during that call."""
        raise NotImplementedError

    def attach_features(self, captured, args: tuple, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        """What the site held -> features (R, L, D), and with `attach_reads_sequence` the whole sequence's
        rows (R, T, D) as `forward_sequence` gives them (else None)."""
        raise NotImplementedError

    def attach_output(self, logits: torch.Tensor, args: tuple, kwargs: dict):
        """Image logits (R, L, K) of the base's head -> what the network returns for that call."""
        raise NotImplementedError


def _rows(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """x (B, T) or (B, T, D) at rows (B, n)."""
    return x.gather(1, rows if x.dim() == 2 else rows[..., None].expand(-1, -1, x.shape[-1]))


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


def call_arguments(function, args: tuple, kwargs: dict) -> dict:
    """The arguments of a call of `function` (an unbound `forward`) by parameter name, defaults filled
    in; a call it does not bind to is a UserError."""

    sig = _SIGNATURES.get(function)
    if sig is None:
        sig = _SIGNATURES[function] = inspect.signature(function)
    try:
        bound = sig.bind(None, *args, **kwargs)
    except TypeError as err:
        raise UserError(f"a call of {function.__qualname__} attach cannot read: {err}") from None
    bound.apply_defaults()
    return dict(bound.arguments)


_SIGNATURES: dict = {}


@torch.no_grad()
def decode_codes(vq, tokens: torch.Tensor, grid: tuple[int, int], codebook_size: int) -> np.ndarray:
    """Image tokens -> uint8 (B, H, W, 3) through diffusers' VQModel as the pipelines decode them
    (force_not_quantize, clipped to [0, 1]; aMUSEd, Meissonic, Lumina-DiMOO)."""
    h, w = grid
    codes = tokens.to(vq.device).clamp(0, codebook_size - 1)
    shape = (codes.shape[0], h, w, vq.config.latent_channels)
    x = vq.decode(codes, force_not_quantize=True, shape=shape).sample.float().clip(0, 1)
    return (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
