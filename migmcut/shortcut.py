"""The shortcut network S: h_{t+1} = h_t + S(h_t, tokens fixed at step t, mask ratio r_t).

Layout (MIGM-Shortcut, DESIGN.md section 1):
  features h_t (B, L, D) --in_proj--> x (B, L, d)            d = D / ratio
  new tokens: base's frozen token embedding + position embedding --kv_proj--> (B, M, d)
            (+ the prompt's token embeddings for text-conditioned bases)
  n_block x [ x += CrossAttn(LN x, new tokens); x += FFN(LN x);
              x += SelfAttn(LN x);              x += FFN(LN x) ]
  LN -> Linear -> GELU -> LN, scale/shift from an MLP of sinusoid(1000 r_t), Linear d -> D,
  and the residual: h_{t+1} = h_t + out.
The output projection starts at zero, so an untrained shortcut is the identity (the cache).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import nn

from migmcut.base import released
from migmcut.errors import CheckpointError, arg
from migmcut.files import atomic_write_all, check_writable_dir
from migmcut.recipe import ShortcutArch


@dataclass(kw_only=True)
class ShortcutConfig(ShortcutArch):
    """The architecture (`recipe.ShortcutArch`) on a base of `feature_dim` features whose condition
    embeddings are `condition_dim` wide (None: feature_dim wide)."""

    feature_dim: int
    condition_dim: int | None = None  # width of the base's condition embeddings where not feature_dim (aMUSEd's CLIP)

    @classmethod
    def from_recipe(cls, section: ShortcutArch, feature_dim: int, condition_dim: int | None = None) -> "ShortcutConfig":
        """The architecture a recipe's `shortcut` section asks for, on a base of `feature_dim` features."""
        arch = {f.name: getattr(section, f.name) for f in fields(ShortcutArch)}
        return cls(feature_dim=feature_dim, condition_dim=None if condition_dim in (None, feature_dim) else condition_dim,
                   **arch)

    @property
    def width(self) -> int:
        return self.feature_dim // self.ratio

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def position_table(n: int, d: int) -> torch.Tensor:
    """(n, d) fixed sinusoids, sin and cos interleaved: the shortcut's own position embedding."""
    pos = torch.arange(n, dtype=torch.float64)[:, None]
    freq = torch.exp(-math.log(10000.0) * torch.arange(0, d, 2, dtype=torch.float64) / d)
    table = torch.zeros(n, d, dtype=torch.float64)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)[:, : d // 2]
    return table.float()


def grid_positions(base) -> torch.Tensor:
    """(L, D) position embeddings of the grid in raster order, in the base's dtype on its device:
    the base's own (`embed_positions`), or for a base without absolute positions (RoPE: Lumina-DiMOO)
    the fixed sinusoids scaled to the RMS of its image-token embeddings."""
    with torch.no_grad():
        grid = torch.arange(base.num_tokens, device=base.device)
        own = base.embed_positions(grid)
        if own is not None:
            return own
        codes = base.embed_tokens(torch.arange(base.codebook_size, device=base.device))
        scale = codes.float().pow(2).mean().sqrt().item()
        return (position_table(base.num_tokens, base.feature_dim) * scale).to(codes.device, codes.dtype)


def sinusoid(x: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=x.device, dtype=torch.float32) / half)
    angles = x.float()[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class Attention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor, ctx_mask: torch.Tensor | None = None) -> torch.Tensor:
        B, L, W = x.shape
        q = self.q(x).view(B, L, self.heads, -1).transpose(1, 2)
        k, v = self.kv(ctx).view(B, ctx.shape[1], 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        mask = None if ctx_mask is None else ctx_mask[:, None, None, :]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(y.transpose(1, 2).reshape(B, L, W))


def ffn(width: int, mult: int) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(width), nn.Linear(width, mult * width), nn.GELU(), nn.Linear(mult * width, width))


class Block(nn.Module):
    def __init__(self, cfg: ShortcutConfig):
        super().__init__()
        w = cfg.width
        self.cross = cfg.cross_attention
        if self.cross:
            self.norm_q = nn.LayerNorm(w)
            self.norm_kv = nn.LayerNorm(w)
            self.cross_attn = Attention(w, cfg.heads)
            self.cross_ffn = ffn(w, cfg.ffn_mult)
        self.norm_self = nn.LayerNorm(w)
        self.self_attn = Attention(w, cfg.heads)
        self.self_ffn = ffn(w, cfg.ffn_mult)

    def forward(self, x, ctx, ctx_mask):
        if self.cross:
            x = x + self.cross_attn(self.norm_q(x), self.norm_kv(ctx), ctx_mask)
            x = x + self.cross_ffn(x)
        h = self.norm_self(x)
        x = x + self.self_attn(h, h)
        return x + self.self_ffn(x)


def pair_conditions(base, conditions: list, branch: torch.Tensor):
    """Encoded conditions of store pairs: branch 1 (CFG's unconditional) gets the null condition."""
    cond = base.encode_conditions(list(conditions))
    return cond.where(branch.to(base.device) == 1, base.null_conditions(len(conditions)))


class SequenceInputs:
    """Training inputs of a shortcut that reads the base's whole input sequence (the paper's released
    networks) from store pairs. A store holds the image rows only, so the base recomputes each pair's
    input sequence from its recorded token state (one frozen forward per pair, as online training
    costs); the new tokens go through the network's own `step_inputs`, as at sampling. Losses read
    the image rows (`image`)."""

    def __init__(self, base, net, device=None):
        self.base, self.net, self.device = base, net, torch.device(device or base.device)
        grid = torch.arange(base.num_tokens, device=base.device)
        self.rows = base.image_rows(grid[None])[0].to(self.device)

    def image(self, h: torch.Tensor) -> torch.Tensor:
        return h[:, self.rows]

    @torch.no_grad()
    def __call__(self, batch: dict) -> dict:
        base, dev = self.base, self.base.device
        tokens, order = batch["tokens"].to(dev), batch["order"].to(dev)
        step = batch["step"].to(dev)[:, None]
        cond = pair_conditions(base, batch["condition"], batch["branch"])
        _, _, sequence = base.forward_sequence(torch.where(order < step, tokens, base.mask_id), cond)
        after = torch.where(order <= step, tokens, base.mask_id)
        x = self.net.step_inputs(base, after, cond, order == step, batch["mask_ratio"].to(dev), sequence.dtype)
        return {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in dict(h=sequence, **x).items()}


class ShortcutInputs:
    """The shortcut's inputs, from the base's frozen embeddings: the one place the sampler's policy,
    the trainer and the rollout evaluation build them, on `device` in `dtype`.

    `condition(cond)`: the encoded conditions (`Conditions`, R rows; the null condition on CFG's
    unconditional rows) -> cond_emb, cond_mask, query_pos (fixed for a whole trajectory: callers
    that step keep it). `tokens(ids, pos, new_mask, mask_ratio)`: the tokens fixed at the last step
    (ids, grid positions, validity: (R, M)) and the fraction still masked (R,) -> new_emb, new_mask,
    mask_ratio. `Shortcut.forward(h, **tokens, **condition)` takes both; `__call__(batch)` builds
    them, with h, for a batch of store pairs (`store.reader.collate_pairs`).
    """

    def __init__(self, base, device=None, dtype: torch.dtype = torch.float32):
        self.base, self.device, self.dtype = base, torch.device(device or base.device), dtype
        self.positions = grid_positions(base)  # (L, D), base dtype and device
        self.query_pos = self.positions.to(self.device, dtype)  # the same for every call

    @staticmethod
    def image(h: torch.Tensor) -> torch.Tensor:
        """The image features of what the shortcut carries (its own: they are the image features)."""
        return h

    @torch.no_grad()
    def condition(self, cond) -> dict:
        emb, mask = self.base.embed_conditions(cond), self.base.condition_mask(cond)
        return dict(cond_emb=None if emb is None else emb.to(self.device, self.dtype),
                    cond_mask=None if mask is None else mask.to(self.device), query_pos=self.query_pos)

    @torch.no_grad()
    def tokens(self, ids, pos, new_mask, mask_ratio) -> dict:
        base = self.base
        new_emb = base.embed_tokens(ids.to(base.device)) + self.positions[pos.to(base.device)]
        return dict(new_emb=new_emb.to(self.device, self.dtype), new_mask=new_mask.to(self.device),
                    mask_ratio=mask_ratio.to(self.device))

    def __call__(self, batch: dict) -> dict:
        cond = pair_conditions(self.base, batch["condition"], batch["branch"])
        return dict(h=batch["h"].to(self.device),
                    **self.tokens(batch["new_ids"], batch["new_pos"], batch["new_mask"], batch["mask_ratio"]),
                    **self.condition(cond))


class Shortcut(nn.Module):
    def __init__(self, cfg: ShortcutConfig):
        super().__init__()
        self.config = cfg
        D, w = cfg.feature_dim, cfg.width
        self.in_proj = nn.Linear(D, w)
        self.kv_proj = nn.Linear(D, w)
        if cfg.query_positions:
            self.pos_proj = nn.Linear(D, w)
        if cfg.condition_dim is not None:  # only then: checkpoints of same-width bases load unchanged
            self.cond_proj = nn.Linear(cfg.condition_dim, D)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_block))
        self.out = nn.Sequential(nn.LayerNorm(w), nn.Linear(w, w), nn.GELU(), nn.LayerNorm(w))
        if cfg.mask_ratio_embedding:
            self.ratio_mlp = nn.Sequential(nn.Linear(w, w), nn.SiLU(), nn.Linear(w, 2 * w))
            nn.init.zeros_(self.ratio_mlp[-1].weight)
            nn.init.zeros_(self.ratio_mlp[-1].bias)
        self.out_proj = nn.Linear(w, D)
        nn.init.zeros_(self.out_proj.weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(
        self,
        h: torch.Tensor,  # (B, L, D) current features
        new_emb: torch.Tensor,  # (B, M, D) embeddings (token + position) of the tokens just fixed
        new_mask: torch.Tensor,  # (B, M) bool, True where new_emb is a real token (not padding)
        mask_ratio: torch.Tensor,  # (B,) fraction of positions still masked after those tokens
        cond_emb: torch.Tensor | None = None,  # (B, P, D or condition_dim) prompt token embeddings
        cond_mask: torch.Tensor | None = None,  # (B, P) bool (None: attend to every position)
        query_pos: torch.Tensor | None = None,  # (L, D) the base's position embeddings of the grid
    ) -> torch.Tensor:
        x = self.in_proj(h)
        if self.config.query_positions:
            if query_pos is None:
                raise ValueError("this shortcut reads the base's position embeddings: pass query_pos")
            x = x + self.pos_proj(query_pos.to(x.dtype))
        ctx, ctx_mask = new_emb, new_mask
        if cond_emb is not None and self.config.attend_condition:
            if cond_mask is None:
                cond_mask = torch.ones(cond_emb.shape[:2], dtype=torch.bool, device=cond_emb.device)
            cond_emb = cond_emb.to(ctx.dtype)
            if self.config.condition_dim is not None:
                cond_emb = self.cond_proj(cond_emb)
            ctx = torch.cat([ctx, cond_emb], 1)
            ctx_mask = torch.cat([ctx_mask, cond_mask], 1)
        ctx = self.kv_proj(ctx)
        for block in self.blocks:
            x = block(x, ctx, ctx_mask)
        x = self.out(x)
        if self.config.mask_ratio_embedding:
            emb = sinusoid(mask_ratio * 1000.0, x.shape[-1]).to(x.dtype)
            scale, shift = self.ratio_mlp(emb).chunk(2, dim=-1)
            x = x * (1 + scale[:, None]) + shift[:, None]
        return h + self.out_proj(x)

    # -- weights -------------------------------------------------------------------------
    def save(self, directory: Path, extra: dict | None = None) -> None:
        save_shortcut(self, directory, extra)


def save_shortcut(net: nn.Module, directory: Path, extra: dict | None = None) -> None:
    """`shortcut.safetensors` + `config.json` (the architecture, `config_of`; `extra`; and the tensors'
    checksum, `CHECKSUM_KEY`, that `load_shortcut` verifies): every shortcut checkpoint, migmcut's own
    or a released network's, is written here."""

    tensors = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    meta = {"shortcut": config_of(net), **(extra or {}), CHECKSUM_KEY: tensors_checksum(tensors)}
    payload = save(tensors)  # bytes, written by Python: a full disk is an OSError (ENOSPC), as everywhere
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_all({directory / "shortcut.safetensors": lambda p: p.write_bytes(payload),
                      directory / "config.json": lambda p: p.write_text(json.dumps(meta, indent=2) + "\n")})


CHECKSUM_KEY = "tensors_sha256"


def tensors_checksum(tensors: dict) -> str:
    """sha256 over the tensors' names, dtypes, shapes and bytes, in name order: what `config.json`
    records (as `tensors_sha256`) and loading checks, whatever file layout holds the tensors."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}\0{str(t.dtype).removeprefix('torch.')}\0{tuple(t.shape)}\0".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def config_of(net: nn.Module) -> dict:
    """The architecture a checkpoint's config.json records: migmcut's `ShortcutConfig`, or a released
    network's own description (with its `arch`)."""
    return dict(net.config) if isinstance(net.config, dict) else asdict(net.config)


BUILTIN = Path(__file__).resolve().parent / "weights"


def resolve_checkpoint(value: str | None, param: str | None = None) -> Path | None:
    """A recipe's `shortcut.checkpoint` (or the value of parameter `param`): None, `builtin:NAME`
    (shipped with migmcut) or a path. A built-in that is not shipped (a typo) is a CheckpointError."""
    if not value:
        return None
    if value.startswith("builtin:"):
        path = BUILTIN / value.split(":", 1)[1] / "shortcut"
        if not (path / "shortcut.safetensors").is_file():

            shipped = sorted(p.parent.parent.name for p in BUILTIN.glob("*/shortcut/shortcut.safetensors"))
            what = arg(param, value) if param else f"shortcut.checkpoint {value!r}"
            raise CheckpointError(f"{what}: migmcut ships no such shortcut (built-in: "
                                  f"{', '.join(f'builtin:{s}' for s in shipped) or 'none'}); give one of those "
                                  "or a checkpoint directory")
        return path
    return Path(value).expanduser()


def load_weights(module: nn.Module, state: dict, what: str) -> None:
    """`module.load_state_dict(state)`, or one line naming the first tensor that disagrees."""

    own = module.state_dict()
    bad = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in own.items() if k in state and state[k].shape != v.shape]
    missing, extra = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
    more = len(bad) + len(missing) + len(extra) - 1
    more = f" (+{more} more)" if more > 0 else ""
    if bad:
        k, got, want = bad[0]
        raise CheckpointError(f"{what}: tensor {k} has shape {got}, the architecture wants {want}{more}")
    if missing or extra:
        k = (missing or extra)[0]
        raise CheckpointError(f"{what}: tensor {k} is {'missing' if missing else 'not in the architecture'}{more}")
    module.load_state_dict(state)


def convert_released(path: str | Path, base, out: str | Path, overwrite: bool = False) -> Path:
    """Write the paper's release at `path` as a migmcut checkpoint in directory `out` (config.json names
    its `arch` and `base`'s fingerprint), which `load_shortcut(out, base)` reads like any other; refused,
    before anything is written, for a file `load_released` refuses or a non-empty `out` without `overwrite`."""
    out = check_writable_dir(Path(out))
    if out.is_dir() and any(not p.name.startswith(".") for p in out.iterdir()) and not overwrite:
        raise CheckpointError(f"{arg('out', out)} is not empty: pass {arg('overwrite', True)} to replace it, or "
                              f"choose another {arg('out')}")
    net, meta = released.load_released(path, base)
    save_shortcut(net, out, {k: v for k, v in meta.items() if k != "shortcut"})
    return out


def load_shortcut(directory: str | Path, base=None) -> tuple[nn.Module, dict]:
    """Load `shortcut.safetensors` + `config.json`, or one of the paper's released `.pth` files for
    `base` (`migmcut.base.released`); refuse a checkpoint made for another base."""


    directory = Path(directory).expanduser()
    if directory.is_file() or directory.suffix in released.SUFFIXES:  # the paper's released .pth files
        return released.load_released(directory, base)
    weights, config = directory / "shortcut.safetensors", directory / "config.json"
    if not weights.is_file() or not config.is_file():
        raise CheckpointError(f"{directory} is not a shortcut checkpoint (needs shortcut.safetensors and config.json)")
    try:
        meta = json.loads(config.read_text())
        arch = meta["shortcut"].get("arch")  # a released network, converted or fine-tuned by migmcut
        model = released.from_config(meta["shortcut"]) if arch else Shortcut(ShortcutConfig(**meta["shortcut"]))
        tensors = load_file(weights)
    except (ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as err:
        raise CheckpointError(f"{directory}: unreadable shortcut checkpoint ({type(err).__name__}: {err})") from None
    if CHECKSUM_KEY in meta and tensors_checksum(tensors) != meta[CHECKSUM_KEY]:  # checkpoints before it: none
        raise CheckpointError(f"{weights}: its tensors do not match the checksum in config.json (a damaged or "
                              "incomplete copy): copy the checkpoint again, or train it again")
    load_weights(model, tensors, f"{directory}: config.json does not match shortcut.safetensors")
    if base is not None:
        want = meta.get("base_fingerprint")
        if want != base.fingerprint:
            raise CheckpointError(
                f"{directory} was trained for base {want}, but this recipe's base is {base.fingerprint}: "
                "train a shortcut for this base (migmcut train) or use its recipe"
            )
        width = config_of(model)["feature_dim"]
        if width != base.feature_dim:
            raise CheckpointError(f"{directory}: feature dim {width} != base's {base.feature_dim}")
    return model.eval().requires_grad_(False), meta
