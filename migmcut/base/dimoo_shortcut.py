"""The paper's DiMOO-Shortcut network (Kaiwen-Zhu/MIGM-Shortcut, `MDMShortcut` in
DiMOO-Shortcut/model/shortcut_model.py), so the released `dimoo-shortcut.pth` runs as it is.

Its `state_dict()` has the release's names and shapes. The file holds no config: the layout (widths,
depth, time embedding) is read from the tensors (`from_state`), the rest from the base's LLaDA config,
as the reference copies it: head and key/value-head counts, RoPE theta and the RMSNorm eps of the base,
at the bottleneck width. The release runs with `infer.py`'s defaults: 1 block, bottleneck ratio 2,
time embedding on, cross-attention on, prompt tokens counted as new tokens (no `--no_prompt`).

Against migmcut's own shortcut (`migmcut.shortcut`):
- it reads and writes the base's whole input sequence (prompt, specials, image tokens and newlines:
  `reads_sequence`, the policy carries `forward_sequence`'s rows);
- each block is a cross-attention LLaDA llama block (queries from the RMS-normed features with RoPE at
  their sequence positions; keys and values from the same norm of the new tokens, RoPE at the new
  tokens' positions; SwiGLU FFN) then a plain bidirectional LLaDA llama block; no bias anywhere
  (LLaDA's include_bias false), FFN as wide as the base's (`mlp_hidden_size`);
- the new tokens are the base's frozen `wte` rows of their vocabulary ids, no position embedding: on
  the conditional branch the whole prompt (template included) counts as new at every shortcut step,
  on the unconditional branch only the image tokens fixed at the step before;
- the output is the RMSNorm `ln_f`, then scale/shift from an MLP of the cos/sin embedding (256
  frequencies) of 1000 r_t, projected back and added to h_t.

Left-padded batches (migmcut runs several prompts at once) compute, row by row, what the reference
computes on the unpadded sequence: positions are the row's own (`partial_sequence(...).pos`), prompt
padding is left out of the self-attention keys and of the new tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from migmcut.base.maskgit_shortcut import RatioEmbedding
from migmcut.errors import CheckpointError

RELEASE = {"n_block": 1, "bottleneck_ratio": 2, "embed_t": True, "cross_attention": True, "prompt_tokens": True}


class _RMSNorm(nn.Module):
    """LLaDA's RMSLayerNorm: normalised in float32, cast back, then scaled."""

    def __init__(self, width: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.float()
        y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * y.to(x.dtype)


def _rotate(x: torch.Tensor, pos: torch.Tensor, theta: float) -> torch.Tensor:
    """RoPE (halves rotated, not interleaved) of x (R, heads, n, hd) at position ids pos (R, n), in float32."""
    hd = x.shape[-1]
    inv_freq = 1.0 / (theta ** (torch.arange(0, hd, 2, device=x.device, dtype=torch.float) / hd))
    freqs = pos.float()[..., None] * inv_freq
    angles = torch.cat((freqs, freqs), dim=-1)[:, None]  # (R, 1, n, hd)
    y = x.float()
    half = y.unflatten(-1, (2, hd // 2))
    rotated = torch.cat((-half[..., 1, :], half[..., 0, :]), dim=-1)
    return (y * angles.cos() + rotated * angles.sin()).to(x.dtype)


class _LlamaBlock(nn.Module):
    """A LLaDA llama block with LLaDA's names: x + attention(attn_norm(x), attn_norm(ctx)), then
    x + ff_out(silu(ff_proj(ff_norm(x))) * up_proj(ff_norm(x))). Without `ctx` it attends to itself."""

    def __init__(self, width: int, heads: int, kv_heads: int, ffn: int, theta: float, eps: float):
        super().__init__()
        self.heads, self.kv_heads, self.theta = heads, kv_heads, theta
        hd = width // heads
        self.attn_norm = _RMSNorm(width, eps)
        self.ff_norm = _RMSNorm(width, eps)
        self.q_proj = nn.Linear(width, width, bias=False)
        self.k_proj = nn.Linear(width, kv_heads * hd, bias=False)
        self.v_proj = nn.Linear(width, kv_heads * hd, bias=False)
        self.attn_out = nn.Linear(width, width, bias=False)
        self.ff_proj = nn.Linear(width, ffn, bias=False)
        self.up_proj = nn.Linear(width, ffn, bias=False)
        self.ff_out = nn.Linear(ffn, width, bias=False)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor | None,
                ctx: torch.Tensor | None = None, ctx_pos: torch.Tensor | None = None) -> torch.Tensor:
        """x (R, T, d) at position ids pos (R, T); ctx (R, n, d) at ctx_pos (R, n), or x itself;
        mask (R, 1, 1, keys) bool: the keys each row attends to (None: all)."""
        xn = self.attn_norm(x)
        cn, cpos = (xn, pos) if ctx is None else (self.attn_norm(ctx), ctx_pos)
        R, T, d = x.shape
        hd = d // self.heads
        q = self.q_proj(xn).view(R, T, self.heads, hd).transpose(1, 2)
        k = self.k_proj(cn).view(R, -1, self.kv_heads, hd).transpose(1, 2)
        v = self.v_proj(cn).view(R, -1, self.kv_heads, hd).transpose(1, 2)
        q, k = _rotate(q, pos, self.theta).type_as(q), _rotate(k, cpos, self.theta).type_as(k)
        if self.kv_heads != self.heads:
            k = k.repeat_interleave(self.heads // self.kv_heads, dim=1)
            v = v.repeat_interleave(self.heads // self.kv_heads, dim=1)
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.attn_out(att.transpose(1, 2).reshape(R, T, d))
        h = self.ff_norm(x)
        return x + self.ff_out(F.silu(self.ff_proj(h)) * self.up_proj(h))


class _Block(nn.Module):
    def __init__(self, *args):
        super().__init__()
        self.cross_attn = _LlamaBlock(*args)
        self.self_attn = _LlamaBlock(*args)

    def forward(self, x, pos, mask, new, new_pos, new_mask):
        x = self.cross_attn(x, pos, new_mask, new, new_pos)
        return self.self_attn(x, pos, mask)


def _llada_settings(config) -> tuple[int, int, float, float]:
    """(heads, kv heads, rope theta, rms eps) of the base's transformers LlamaConfig (LLaDA's values)."""
    rope = getattr(config, "rope_parameters", None) or {}
    theta = rope.get("rope_theta", getattr(config, "rope_theta", None))
    heads = config.num_attention_heads
    return heads, config.num_key_value_heads or heads, float(theta), float(config.rms_norm_eps)


class DiMOOShortcut(nn.Module):
    """h_{t+1} over the base's whole input sequence (R, T, D) from h_t, the new tokens and r_t."""

    reads_sequence = True
    arch = "dimoo-shortcut"

    def __init__(self, feature_dim: int, width: int, *, heads: int, kv_heads: int, ffn: int, rope_theta: float,
                 eps: float, n_block: int = 1, ratio_embedding: tuple[int, int | None] | None = (256, None)):
        super().__init__()
        if width % heads or heads % kv_heads:
            raise ValueError(f"width {width} / {heads} heads / {kv_heads} key-value heads do not divide")
        self.config = {"arch": self.arch, "feature_dim": feature_dim, "width": width, "n_block": n_block,
                       "heads": heads, "kv_heads": kv_heads, "ffn": ffn, "rope_theta": rope_theta, "eps": eps,
                       "ratio_embedding": list(ratio_embedding) if ratio_embedding else None}
        if width != feature_dim:  # bottleneck ratio 1 has no projections at all
            self.proj_in = nn.Linear(feature_dim, width)
            self.proj_out = nn.Linear(width, feature_dim)
            self.new_token_proj_in = nn.Linear(feature_dim, width)
        self.blocks = nn.ModuleList(_Block(width, heads, kv_heads, ffn, rope_theta, eps) for _ in range(n_block))
        self.ln_f = _RMSNorm(width, eps)
        if ratio_embedding is not None:
            frequencies, hidden = ratio_embedding
            self.time_embedder = RatioEmbedding(width, hidden or round((width * frequencies) ** 0.5), frequencies)
            self.adaLN_modulation = nn.Linear(width, 2 * width)

    def _project(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return getattr(self, name)(x) if hasattr(self, name) else x

    def forward(self, h: torch.Tensor, new_emb: torch.Tensor, new_pos: torch.Tensor, mask_ratio: torch.Tensor,
                pos: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                new_mask: torch.Tensor | None = None) -> torch.Tensor:
        """h (R, T, D): every row of the sequence; new_emb (R, n, D): the new tokens' `wte` rows, at
        position ids new_pos (R, n); mask_ratio (R,): the fraction of the image still masked.
        pos (R, T): the rows' position ids (None: 0..T-1); mask (R, T) bool: the rows that are keys of
        the self-attention (None: all); new_mask (R, n) bool: the new tokens that are real (None: all)."""
        R, T, _ = h.shape
        if pos is None:
            pos = torch.arange(T, device=h.device).expand(R, -1)
        mask = None if mask is None else mask[:, None, None, :]
        new_mask = None if new_mask is None else new_mask[:, None, None, :]
        new = self._project("new_token_proj_in", new_emb)
        x = self._project("proj_in", h)
        for block in self.blocks:
            x = block(x, pos, mask, new, new_pos, new_mask)
        x = self.ln_f(x)
        if hasattr(self, "time_embedder"):
            scale, shift = self.adaLN_modulation(self.time_embedder(mask_ratio * 1000)).unsqueeze(1).chunk(2, dim=-1)
            x = x * (1 + scale) + shift
        return self._project("proj_out", x) + h

    def step_inputs(self, base, tokens: torch.Tensor, cond, new: torch.Tensor, mask_ratio: torch.Tensor,
                    dtype: torch.dtype) -> dict:
        """`forward`'s inputs besides h, built as `generate_image_shortcut` builds them: `tokens` (R, L)
        the state with the new tokens in, `new` (R, L) where they were fixed, `cond` R rows (CFG's
        unconditional ones marked `null`), `mask_ratio` (R,)."""
        seq = base.partial_sequence(tokens, cond)
        R, T = seq.ids.shape
        real = torch.ones(R, T, dtype=torch.bool, device=tokens.device) if seq.mask is None else seq.mask[:, 0, 0]
        grid = torch.arange(tokens.shape[1], device=tokens.device).expand(R, -1)
        is_new = torch.zeros(R, T, dtype=torch.bool, device=tokens.device).scatter_(1, base.image_rows(grid), new)
        prompt = torch.arange(T, device=tokens.device) < base.prompt_length
        is_new |= prompt & real & ~cond["null"][:, None]  # the conditional prompt, at every shortcut step
        count = is_new.sum(1)
        rows = torch.argsort((~is_new).to(torch.uint8), dim=1, stable=True)[:, : int(count.max())]  # in sequence order
        new_pos = seq.pos.gather(1, rows)
        emb = base.embed_rows(seq.ids.gather(1, rows), new_pos)
        new_mask = torch.arange(rows.shape[1], device=tokens.device) < count[:, None]
        return dict(new_emb=emb.to(dtype), new_pos=new_pos, mask_ratio=mask_ratio.float(), pos=seq.pos,
                    mask=None if seq.mask is None else real, new_mask=None if bool(new_mask.all()) else new_mask)

    def advance(self, base, sequence: torch.Tensor, tokens: torch.Tensor, cond, new: torch.Tensor,
                mask_ratio: float) -> torch.Tensor:
        """One shortcut step for the sampler's policy: `sequence` (R, T, D) the last rows (the rest as
        `step_inputs`)."""
        ratio = torch.full((tokens.shape[0],), mask_ratio, dtype=torch.float32, device=sequence.device)
        return self(sequence, **self.step_inputs(base, tokens, cond, new, ratio, sequence.dtype))

    @classmethod
    def from_config(cls, config: dict) -> "DiMOOShortcut":
        """The network `config` (what `self.config` holds, e.g. from a checkpoint's config.json) describes."""
        c = {k: v for k, v in config.items() if k not in ("arch", "feature_dim", "width")}
        ratio = c.pop("ratio_embedding")
        return cls(config["feature_dim"], config["width"], **c, ratio_embedding=None if ratio is None else tuple(ratio))

    # -- the released file ---------------------------------------------------------------------
    @staticmethod
    def matches(state: dict) -> bool:
        return "blocks.0.cross_attn.q_proj.weight" in state and "ln_f.weight" in state

    @classmethod
    def from_state(cls, state: dict, base, where: str) -> DiMOOShortcut:
        """The network a release's state_dict describes: widths from `ln_f` and `proj_in`, depth from
        `blocks.N`, the FFN from `ff_proj`, the time embedding from `time_embedder.mlp`; heads, RoPE theta
        and eps from the base's config; refused for a base of another width."""
        width = state["ln_f.weight"].shape[0]
        D = state["proj_in.weight"].shape[1] if "proj_in.weight" in state else width
        if D != base.feature_dim:
            raise CheckpointError(f"{where}: a DiMOO-Shortcut for {D}-wide features, but this base's are "
                                  f"{base.feature_dim} wide (another model size)")
        if "proj_in.weight" in state and "new_token_proj_in.weight" not in state:
            raise CheckpointError(f"{where}: a DiMOO-Shortcut without cross-attention (trained with --no_ca); "
                                  "only the release's layout, with cross-attention, is supported")
        heads, kv_heads, theta, eps = _llada_settings(base.net.config)
        if width % heads:
            raise CheckpointError(f"{where}: bottleneck width {width} does not split into the base's {heads} heads")
        n_block = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
        ratio = None
        if "time_embedder.mlp.0.weight" in state:
            hidden, frequencies = state["time_embedder.mlp.0.weight"].shape
            ratio = (frequencies, hidden)
        ffn = state["blocks.0.self_attn.ff_proj.weight"].shape[0] if "blocks.0.self_attn.ff_proj.weight" in state else 1
        return cls(D, width, heads=heads, kv_heads=kv_heads, ffn=ffn, rope_theta=theta, eps=eps, n_block=n_block,
                   ratio_embedding=ratio)
