"""The paper's MaskGIT-Shortcut network (Kaiwen-Zhu/MIGM-Shortcut, `MaskGITShortcut` in
MaskGIT-Shortcut/Network/shortcut_model.py), so the released `maskgit-shortcut.pth` runs as it is.

Its `state_dict()` has the release's names and shapes; the file holds no config, so the layout is
read from the tensors (`from_state`). Against migmcut's own shortcut (`migmcut.shortcut`):
- it reads and writes the whole input sequence of the base, the class token's row included
  (`reads_sequence`: the policy carries `forward_sequence`'s rows instead of the image features);
- the new tokens are the base's frozen token embedding plus its position embedding, projected to
  the bottleneck; both attentions normalise only their queries (the self-attention's keys and
  values are the features before its pre-norm, as the reference calls it);
- attention is `nn.MultiheadAttention`'s projections at 16 heads (the release: `infer.py` and
  `main.py` build it with `num_heads=16`), FFNs are 4x wide with GELU, pre-norms LayerNorm(eps 1e-5);
- the output is LayerNorm(1e-12)-Linear-GELU-LayerNorm(1e-12), scaled and shifted by a linear map of
  an MLP of the cos/sin embedding (256 frequencies) of 1000 r_t, projected back and added to h_t.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from migmcut.base.maskgit import MLP, Normed
from migmcut.errors import CheckpointError

RELEASE_HEADS = 16  # not in the file: the release's inference and evaluation scripts pass num_heads=16


class _Attention(nn.Module):
    """Queries from the normalised features, keys and values from `ctx` as it is: the new tokens for the
    cross-attention, and for the self-attention the features before the norm (the reference passes
    `key=x, value=x` past its pre-norm, which normalises only the query)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fn = nn.Module()
        self.fn.mha = nn.MultiheadAttention(width, heads, batch_first=True, bias=True)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor, padding: torch.Tensor | None = None) -> torch.Tensor:
        return self.fn.mha(self.norm(x), ctx, ctx, key_padding_mask=padding, need_weights=False)[0]


class _Block(nn.Module):
    def __init__(self, width: int, heads: int, ffn: int):
        super().__init__()
        self.cross_attn = _Attention(width, heads)
        self.cross_attn_ff = Normed(width, MLP(width, ffn))
        self.self_attn = _Attention(width, heads)
        self.self_attn_ff = Normed(width, MLP(width, ffn))

    def forward(self, x: torch.Tensor, ctx: torch.Tensor, padding: torch.Tensor | None) -> torch.Tensor:
        x = x + self.cross_attn(x, ctx, padding)
        x = x + self.cross_attn_ff(x)
        x = x + self.self_attn(x, x)
        return x + self.self_attn_ff(x)


class RatioEmbedding(nn.Module):
    """r -> MLP(cos/sin features of r): `frequencies` sinusoids with periods up to 10000."""

    def __init__(self, width: int, hidden: int, frequencies: int):
        super().__init__()
        self.frequencies = frequencies
        self.mlp = nn.Sequential(nn.Linear(frequencies, hidden), nn.SiLU(), nn.Linear(hidden, width))

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        half = self.frequencies // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=r.device) / half)
        angles = r.float()[:, None] * freqs[None]
        emb = torch.cat([angles.cos(), angles.sin()], dim=-1)
        if self.frequencies % 2:
            emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


class MaskGITShortcut(nn.Module):
    """h_{t+1} over the whole sequence (R, L + 1, D) from h_t, the new tokens' embeddings and r_t."""

    reads_sequence = True
    arch = "maskgit-shortcut"

    def __init__(self, feature_dim: int, width: int, n_block: int = 1, heads: int = RELEASE_HEADS,
                 ffn: int | None = None, ratio_embedding: tuple[int, int] | None = (256, None)):
        super().__init__()
        self.config = {"arch": self.arch, "feature_dim": feature_dim, "width": width, "n_block": n_block,
                       "heads": heads, "ffn": ffn or 4 * width, "ratio_embedding": ratio_embedding}
        if width != feature_dim:  # bottleneck ratio 1 has no projections at all
            self.proj_in = nn.Linear(feature_dim, width)
            self.proj_out = nn.Linear(width, feature_dim)
            self.new_token_proj_in = nn.Linear(feature_dim, width)
        self.blocks = nn.ModuleList(_Block(width, heads, ffn or 4 * width) for _ in range(n_block))
        self.last_layer = nn.Sequential(nn.LayerNorm(width, eps=1e-12), nn.Linear(width, width), nn.GELU(),
                                        nn.LayerNorm(width, eps=1e-12))
        if ratio_embedding is not None:
            frequencies, hidden = ratio_embedding
            self.time_embedder = RatioEmbedding(width, hidden or round(math.sqrt(width * frequencies)), frequencies)
            self.adaLN_modulation = nn.Linear(width, 2 * width)

    def _project(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return getattr(self, name)(x) if hasattr(self, name) else x

    def forward(self, h: torch.Tensor, new_emb: torch.Tensor, mask_ratio: torch.Tensor,
                new_mask: torch.Tensor | None = None) -> torch.Tensor:
        """h (R, T, D) every row's features; new_emb (R, M, D) the tokens just fixed, embedded (token +
        position, in raster order); mask_ratio (R,) the fraction still masked; new_mask (R, M) where
        new_emb is a token, not padding (None: all are, as at sampling)."""
        ctx = self._project("new_token_proj_in", new_emb)
        x = self._project("proj_in", h)
        for block in self.blocks:
            x = block(x, ctx, None if new_mask is None else ~new_mask)
        x = self.last_layer(x)
        if hasattr(self, "time_embedder"):
            scale, shift = self.adaLN_modulation(self.time_embedder(mask_ratio * 1000)).unsqueeze(1).chunk(2, dim=-1)
            x = x * (1 + scale) + shift
        return h + self._project("proj_out", x)

    def step_inputs(self, base, tokens: torch.Tensor, cond, new: torch.Tensor, mask_ratio: torch.Tensor,
                    dtype: torch.dtype) -> dict:
        """`forward`'s inputs besides h: `tokens` (R, L) the state with the new tokens in, `new` (R, L)
        where they were fixed, `mask_ratio` (R,). Rows that fixed fewer tokens (training pairs of
        several steps) are padded and masked; at sampling every row fixed as many."""
        counts = new.sum(1)
        M = int(counts.max())
        rank = new.cumsum(1) - 1  # each new token's place among its row's, in raster order
        pos = torch.zeros(new.shape[0], M, dtype=torch.long, device=new.device)
        pos[new.nonzero(as_tuple=True)[0], rank[new]] = new.nonzero(as_tuple=True)[1]
        valid = torch.arange(M, device=new.device)[None] < counts[:, None]
        emb = base.embed_tokens(tokens.gather(1, pos)) + base.embed_positions(pos)
        return dict(new_emb=emb.to(dtype), mask_ratio=mask_ratio.float(),
                    new_mask=None if bool(valid.all()) else valid)

    def advance(self, base, sequence: torch.Tensor, tokens: torch.Tensor, cond, new: torch.Tensor,
                mask_ratio: float) -> torch.Tensor:
        """One shortcut step for the sampler's policy: `sequence` (R, L + 1, D) the last rows, `tokens`
        (R, L) the state with the new tokens in, `new` (R, L) where they were fixed."""
        ratio = torch.full((tokens.shape[0],), mask_ratio, dtype=torch.float32, device=sequence.device)
        return self(sequence, **self.step_inputs(base, tokens, cond, new, ratio, sequence.dtype))

    @classmethod
    def from_config(cls, config: dict) -> "MaskGITShortcut":
        """The network `config` (what `self.config` holds, e.g. from a checkpoint's config.json) describes."""
        ratio = config["ratio_embedding"]
        return cls(config["feature_dim"], config["width"], config["n_block"], config["heads"], config["ffn"],
                   None if ratio is None else tuple(ratio))

    # -- the released file ---------------------------------------------------------------------
    @staticmethod
    def matches(state: dict) -> bool:
        return "blocks.0.cross_attn.fn.mha.in_proj_weight" in state and "last_layer.0.weight" in state

    @classmethod
    def from_state(cls, state: dict, base, where: str) -> "MaskGITShortcut":
        """The network a release's state_dict describes: widths from `blocks.0` and `proj_in`, depth from
        `blocks.N`, the ratio embedding from `time_embedder.mlp`; refused for a base of another width."""
        width = state["blocks.0.cross_attn.norm.weight"].shape[0]
        D = state["proj_in.weight"].shape[1] if "proj_in.weight" in state else width
        if D != base.feature_dim:
            raise CheckpointError(f"{where}: a MaskGIT-Shortcut for {D}-wide features, but this base's are "
                                  f"{base.feature_dim} wide (another model size)")
        n_block = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
        if width % RELEASE_HEADS:
            raise CheckpointError(f"{where}: bottleneck width {width} does not split into the release's "
                                  f"{RELEASE_HEADS} attention heads")
        ratio = None
        if "time_embedder.mlp.0.weight" in state:
            hidden, frequencies = state["time_embedder.mlp.0.weight"].shape
            ratio = (frequencies, hidden)
        return cls(D, width, n_block, RELEASE_HEADS, state["blocks.0.cross_attn_ff.fn.net.0.weight"].shape[0], ratio)
