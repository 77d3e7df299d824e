"""MaskGIT (valeoai MaskGIT-pytorch v1.0, ImageNet 256/512) with its taming VQGAN decoder.

The transformer is rebuilt here so that its `state_dict()` has exactly the names and shapes of
the official `MaskGIT_ImageNet_512.pth` (entry `model_state_dict`), and the decoder those of the
taming `VQModel` in `last.ckpt` (entry `state_dict`; only `quantize.*`, `post_quant_conv.*` and
`decoder.*` are used, the encoder and loss keys are ignored).

Sequence: the L = grid*grid image tokens (mask id = codebook_size) followed by one class token.
Vocabulary of the token embedding: [0, K) codes, K mask, K+1 .. K+nclass classes, K+1+nclass the
null class of classifier-free guidance. Features are the output of `last_layer` (after its final
LayerNorm) at the image positions; the head is that times the tied token embedding plus a
per-position bias, restricted to the K code columns (the reference also keeps the mask column in
its softmax; we drop it, see docs/real-models.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn

from migmcut.base.conditions import Conditions
from migmcut.base.interface import BaseModel, call_arguments, fingerprint_of
from migmcut.base.partial import Sequence, split_heads
from migmcut.base.statedict import load_into, read_tensors, require_path
from migmcut.errors import CheckpointError, UserError
from migmcut.base.condition_sources import ConditionSource, uniform_labels


@dataclass(kw_only=True)
class MaskGITConfig:
    """Recipe section `base` for `kind: maskgit`.

    `checkpoint`: the transformer file (MaskGIT_ImageNet_512.pth, or a .safetensors of its
    `model_state_dict`). `vqgan`: the directory holding the taming VQGAN `last.ckpt` and
    `model.yaml` (the reference download puts them in pretrained_maskgit/VQGAN/; v1's own layout,
    configs/model.yaml and ckpts/last.ckpt, is read too). Both keys are
    required in every recipe; `null` means "not set yet" and is reported when the model loads.
    """

    kind: str = "maskgit"
    checkpoint: str | None
    vqgan: str | None
    hidden_size: int = 768
    depth: int = 24
    heads: int = 16
    mlp_dim: int = 3072
    grid: int = 32  # image tokens per side: 512 px / 16
    codebook_size: int = 1024
    num_classes: int = 1000
    trust_pickle: bool = False  # load .pth/.ckpt with full pickle instead of weights_only


# -- the transformer (key names follow Network/transformer.py of MaskGIT-pytorch v1) ---------
class Normed(nn.Module):
    def __init__(self, dim: int, fn: nn.Module):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fn = fn

    def forward(self, x):
        return self.fn(self.norm(x))


class _SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.mha = nn.MultiheadAttention(dim, num_heads=heads, batch_first=True, bias=True)

    def forward(self, x):
        return self.mha(x, x, x, need_weights=False)[0]


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        # indices matter for the key names: net.0 and net.3 are the linear layers
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(0.0), nn.Linear(hidden, dim), nn.Dropout(0.0))

    def forward(self, x):
        return self.net(x)


class _Encoder(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int, mlp_dim: int):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList([Normed(dim, _SelfAttention(dim, heads)), Normed(dim, MLP(dim, mlp_dim))]) for _ in range(depth)
        )

    def forward(self, x):
        for attn, ff in self.layers:
            x = x + attn(x)
            x = x + ff(x)
        return x


class MaskGITTransformer(nn.Module):
    def __init__(self, hidden: int, depth: int, heads: int, mlp_dim: int, grid: int, codebook: int, nclass: int):
        super().__init__()
        self.codebook_size, self.nclass, self.length = codebook, nclass, grid * grid
        vocab = codebook + 1 + nclass + 1
        self.tok_emb = nn.Embedding(vocab, hidden)
        self.pos_emb = nn.Parameter(torch.zeros(1, self.length + 1, hidden))
        self.first_layer = nn.Sequential(
            nn.LayerNorm(hidden, eps=1e-12), nn.Dropout(0.0), nn.Linear(hidden, hidden), nn.GELU(),
            nn.LayerNorm(hidden, eps=1e-12), nn.Dropout(0.0), nn.Linear(hidden, hidden),
        )
        self.transformer = _Encoder(hidden, depth, heads, mlp_dim)
        self.last_layer = nn.Sequential(
            nn.LayerNorm(hidden, eps=1e-12), nn.Dropout(0.0), nn.Linear(hidden, hidden), nn.GELU(),
            nn.LayerNorm(hidden, eps=1e-12),
        )
        self.bias = nn.Parameter(torch.zeros(self.length + 1, vocab))

    def sequence_features(self, tokens: torch.Tensor, cls_token: torch.Tensor) -> torch.Tensor:
        """tokens (B, L) with K where masked, cls_token (B, 1) already shifted -> (B, L + 1, D): the
        head's input at every position, the class token's last."""
        x = self.tok_emb(torch.cat([tokens, cls_token], 1)) + self.pos_emb
        return self.last_layer(self.transformer(self.first_layer(x)))

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """(..., L, D) -> (..., L, K) with the per-position bias. Features without their position
        axis (e.g. (N, D) rows gathered by a loss) get the bias averaged over positions."""
        K = self.codebook_size
        logits = torch.nn.functional.linear(features, self.tok_emb.weight[:K])
        if features.dim() >= 3 and features.shape[-2] == self.length:
            return logits + self.bias[: self.length, :K]
        return logits + self.bias[: self.length, :K].mean(0)

    def forward(self, img_token: torch.Tensor, y: torch.Tensor, drop_label: torch.Tensor) -> torch.Tensor:
        """The call of MaskGIT's `sample` loop, `vit(img_token, y, drop_label)`: tokens (B, h, w) or (B, L)
        with K where masked, class ids y (B,), drop_label (B,) bool (the null class where True) ->
        logits (B, L, K): the code columns, as the paper's code slices them and migmcut's head gives them."""
        b = img_token.shape[0]
        null = torch.full((b, 1), self.codebook_size + 1 + self.nclass, dtype=torch.long, device=img_token.device)
        cls = torch.where(drop_label.view(b, 1).to(img_token.device), null, y.view(b, 1) + self.codebook_size + 1)
        return self.head(self.sequence_features(img_token.reshape(b, -1), cls)[:, : self.length])


# -- the taming VQGAN decoder (key names follow taming-transformers' VQModel) --------------------
def group_norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, c, eps=1e-6, affine=True)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm1, self.conv1 = group_norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = group_norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x):
        h = self.conv1(torch.nn.functional.silu(self.norm1(x)))
        h = self.conv2(torch.nn.functional.silu(self.norm2(h)))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class AttnBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.norm = group_norm(c)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(c, c, 1) for _ in range(4))

    def forward(self, x):
        b, c, h, w = x.shape
        y = self.norm(x)
        q, k, v = (m(y).flatten(2).transpose(1, 2) for m in (self.q, self.k, self.v))  # (b, hw, c)
        out = torch.nn.functional.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
        return x + self.proj_out(out.transpose(1, 2).reshape(b, c, h, w))


class Upsample(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return self.conv(torch.nn.functional.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Decoder(nn.Module):
    def __init__(self, *, ch, out_ch, ch_mult, num_res_blocks, attn_resolutions, resolution, z_channels, **_):
        super().__init__()
        n = len(ch_mult)
        block_in = ch * ch_mult[-1]
        res = resolution // 2 ** (n - 1)
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, padding=1)
        self.mid = nn.Module()
        self.mid.block_1 = ResBlock(block_in, block_in)
        self.mid.attn_1 = AttnBlock(block_in)
        self.mid.block_2 = ResBlock(block_in, block_in)
        ups = []
        for level in reversed(range(n)):
            up = nn.Module()
            up.block, up.attn = nn.ModuleList(), nn.ModuleList()
            block_out = ch * ch_mult[level]
            for _ in range(num_res_blocks + 1):
                up.block.append(ResBlock(block_in, block_out))
                block_in = block_out
                if res in attn_resolutions:
                    up.attn.append(AttnBlock(block_in))
            if level != 0:
                up.upsample = Upsample(block_in)
                res *= 2
            ups.insert(0, up)
        self.up = nn.ModuleList(ups)
        self.norm_out = group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, out_ch, 3, padding=1)

    def forward(self, z):
        return decode_stages(self, z)


def decode_stages(d: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """A taming-style decoder's pass (conv_in, mid, up levels from the deepest, norm_out, conv_out) over
    the submodules of `d`; MMaDA's MAGVIT-v2 decoder has the same stages."""
    h = d.mid.block_2(d.mid.attn_1(d.mid.block_1(d.conv_in(z))))
    for level in reversed(range(len(d.up))):
        up = d.up[level]
        for i, block in enumerate(up.block):
            h = block(h)
            if len(up.attn):
                h = up.attn[i](h)
        if hasattr(up, "upsample"):
            h = up.upsample(h)
    return d.conv_out(torch.nn.functional.silu(d.norm_out(h)))


class _Quantize(nn.Module):
    def __init__(self, n_embed: int, embed_dim: int):
        super().__init__()
        self.embedding = nn.Embedding(n_embed, embed_dim)


class TamingVQDecoder(nn.Module):
    """codes -> images: the decode path of taming's VQModel (quantize lookup, post_quant_conv, decoder)."""

    PREFIXES = ("quantize.", "post_quant_conv.", "decoder.")

    def __init__(self, params: dict):
        super().__init__()
        dd = params["ddconfig"]
        self.embed_dim = int(params["embed_dim"])
        self.quantize = _Quantize(int(params["n_embed"]), self.embed_dim)
        self.post_quant_conv = nn.Conv2d(self.embed_dim, dd["z_channels"], 1)
        self.decoder = _Decoder(**dd)
        self.factor = 2 ** (len(dd["ch_mult"]) - 1)

    def forward(self, codes: torch.Tensor, grid: int) -> torch.Tensor:
        z = self.quantize.embedding(codes).view(codes.shape[0], grid, grid, self.embed_dim).permute(0, 3, 1, 2)
        return self.decoder(self.post_quant_conv(z))  # in [-1, 1]


VQGAN_LAYOUTS = "model.yaml + last.ckpt (the Hub download), or configs/model.yaml + ckpts/last.ckpt (Maskgit-pytorch v1)"


def vqgan_file(folder: Path, name: str, sub: str) -> Path | None:
    """`name` in the VQGAN folder: flat, or under `sub`/ as Maskgit-pytorch v1 (674ef1d, Trainer/vit.py) reads it."""
    return next((p for p in (folder / name, folder / sub / name) if p.is_file()), None)


def read_vqgan_params(folder: Path) -> dict:
    """model.yaml -> the VQModel params (embed_dim, n_embed, ddconfig)."""
    path = vqgan_file(folder, "model.yaml", "configs")
    if path is None:
        raise UserError(f"base.vqgan: {folder} has no model.yaml (set base.vqgan to the VQGAN folder: {VQGAN_LAYOUTS})")
    try:
        data = yaml.safe_load(path.read_text())
        params = data["model"]["params"]
        dd = params["ddconfig"]
        for k in ("ch", "out_ch", "ch_mult", "num_res_blocks", "attn_resolutions", "resolution", "z_channels"):
            dd[k]
        int(params["embed_dim"]), int(params["n_embed"])
    except (yaml.YAMLError, KeyError, TypeError, ValueError) as err:
        raise UserError(f"{path}: not a taming VQModel config (model.params.ddconfig ...): {err!r}") from None
    return params


class MaskGITBase(BaseModel):
    config_class = MaskGITConfig
    condition_source = ConditionSource("labels", "classes/uniform/v1", uniform_labels)

    def __init__(self, net: MaskGITTransformer, vq: TamingVQDecoder, grid: int, meta: dict):
        super().__init__()
        self.net = net.eval().requires_grad_(False)
        self.vq = vq.eval().requires_grad_(False)
        self.codebook_size = net.codebook_size
        self.mask_id = self.codebook_size
        self.num_classes = net.nclass
        self.grid = (grid, grid)
        self.feature_dim = net.tok_emb.embedding_dim
        self.fingerprint = fingerprint_of(meta, self) if net.pos_emb.device.type != "meta" else "meta"

    @staticmethod
    def build_transformer(cfg: MaskGITConfig) -> MaskGITTransformer:
        return MaskGITTransformer(cfg.hidden_size, cfg.depth, cfg.heads, cfg.mlp_dim, cfg.grid, cfg.codebook_size, cfg.num_classes)

    @classmethod
    def from_config(cls, cfg: MaskGITConfig, dtype: torch.dtype = torch.float32) -> "MaskGITBase":
        ckpt = require_path(cfg.checkpoint, "base.checkpoint", "the MaskGIT transformer file (e.g. MaskGIT_ImageNet_512.pth)")
        folder = require_path(cfg.vqgan, "base.vqgan", "the VQGAN folder holding last.ckpt and model.yaml", expect="dir")
        if cfg.hidden_size % cfg.heads:
            raise UserError(f"base.hidden_size {cfg.hidden_size} is not divisible by base.heads {cfg.heads}")
        with torch.device("meta"):
            net = cls.build_transformer(cfg)
        tensors = read_tensors(ckpt, entry=None if ckpt.suffix == ".safetensors" else "model_state_dict",
                               trust_pickle=cfg.trust_pickle, key="base.checkpoint")
        tensors = {k.removeprefix("module."): v for k, v in tensors.items()}  # a DDP-saved file
        load_into(net, tensors, str(ckpt), dtype=dtype)
        params = read_vqgan_params(folder)
        vq_file = vqgan_file(folder, "last.ckpt", "ckpts")
        if vq_file is None:
            alt = sorted(folder.glob("*.safetensors"))
            if not alt:
                raise UserError(f"base.vqgan: {folder} has no last.ckpt (set base.vqgan to the VQGAN folder: {VQGAN_LAYOUTS})")
            vq_file = alt[0]
        with torch.device("meta"):
            vq = TamingVQDecoder(params)
        vq_tensors = read_tensors(vq_file, entry=None if vq_file.suffix == ".safetensors" else "state_dict",
                                  trust_pickle=cfg.trust_pickle, key="base.vqgan")
        vq_tensors = {k: v for k, v in vq_tensors.items() if k.startswith(TamingVQDecoder.PREFIXES)}
        load_into(vq, vq_tensors, str(vq_file), dtype=dtype)
        if vq.quantize.embedding.num_embeddings != cfg.codebook_size:
            raise CheckpointError(
                f"the VQGAN has {vq.quantize.embedding.num_embeddings} codes but base.codebook_size is {cfg.codebook_size}"
            )
        vq_res = params["ddconfig"]["resolution"]
        meta = {"kind": "maskgit", "config": {k: v for k, v in cfg.__dict__.items() if k not in ("checkpoint", "vqgan")},
                "vqgan": json.loads(json.dumps(params.get("ddconfig", {}), default=str)), "vq_res": vq_res}
        return cls(net, vq, cfg.grid, meta)

    # -- the interface --------------------------------------------------------------------
    def encode_conditions(self, conditions: list) -> Conditions:
        ids = []
        for c in conditions:
            if isinstance(c, str) or isinstance(c, bool) or not isinstance(c, (int, np.integer)):
                raise UserError("maskgit is class-conditional: give --class ID (an ImageNet class 0..999), not --prompt")
            if not 0 <= int(c) < self.num_classes:
                raise UserError(f"class id {c} is out of range: give 0..{self.num_classes - 1}")
            ids.append(int(c) + self.codebook_size + 1)
        return Conditions(ids=torch.tensor(ids, dtype=torch.long, device=self.device).view(-1, 1))

    def null_conditions(self, n: int) -> Conditions:
        null = self.codebook_size + 1 + self.num_classes
        return Conditions(ids=torch.full((n, 1), null, dtype=torch.long, device=self.device))

    def forward(self, tokens: torch.Tensor, cond: Conditions) -> tuple[torch.Tensor, torch.Tensor]:
        logits, features, _ = self.forward_sequence(tokens, cond)
        return logits, features

    def forward_sequence(self, tokens: torch.Tensor, cond: Conditions):
        sequence = self.net.sequence_features(tokens, cond["ids"])
        features = sequence[:, : self.num_tokens]
        return self.net.head(features), features, sequence

    def head(self, features: torch.Tensor) -> torch.Tensor:
        return self.net.head(features)

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.net.tok_emb(tokens)

    def embed_positions(self, positions: torch.Tensor) -> torch.Tensor:
        return self.net.pos_emb[0][positions]

    def embed_conditions(self, cond: Conditions) -> torch.Tensor:
        return self.net.tok_emb(cond["ids"])

    # -- partial evaluation: the pre-norm encoder layers by hand ------------------------------------
    supports_partial = True

    def partial_sequence(self, tokens: torch.Tensor, cond: Conditions) -> Sequence:
        ids = torch.cat([tokens, cond["ids"]], 1)  # the class token is last
        return Sequence(ids, torch.arange(ids.shape[1], device=ids.device).expand_as(ids), None)

    def image_rows(self, positions: torch.Tensor) -> torch.Tensor:
        return positions

    def embed_rows(self, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return self.net.first_layer(self.net.tok_emb(ids) + self.net.pos_emb[0][pos])

    def partial_blocks(self) -> list:
        return list(self.net.transformer.layers)

    def block_qkv(self, block, x, pos):
        attn = block[0]
        mha = attn.fn.mha
        qkv = torch.nn.functional.linear(attn.norm(x), mha.in_proj_weight, mha.in_proj_bias)
        return tuple(split_heads(t, mha.head_dim) for t in qkv.chunk(3, dim=-1))

    def block_out(self, block, x, attn):
        x = x + block[0].fn.mha.out_proj(attn)
        return x + block[1](x)

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.last_layer(x)

    def head_at(self, features: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        K = self.codebook_size
        return torch.nn.functional.linear(features, self.net.tok_emb.weight[:K]) + self.net.bias[positions, :K]

    def kv_layout(self) -> tuple[int, int, int]:
        return len(self.net.transformer.layers), self.num_tokens + 1, self.feature_dim

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> np.ndarray:
        codes = tokens.to(self.device).clamp(0, self.codebook_size - 1)
        x = self.vq(codes, self.grid[0]).float()
        return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()

    # -- attach (migmcut.attach): MaskGIT's `sample` calls `net(tokens, labels, drop_label)`, CFG rows batched --
    budget_rounding = "half-even"  # the reference's refresh_steps (Python's round)
    attach_reads_sequence = True  # the released MaskGIT-Shortcut carries last_layer's whole output

    def attach_network(self):
        return self.net

    def attach_read(self, args, kwargs):
        call = call_arguments(MaskGITTransformer.forward, args, kwargs)
        tok, y, drop = call["img_token"], call["y"], call["drop_label"]
        if not torch.is_tensor(tok) or tok[0].numel() != self.num_tokens:
            raise UserError(f"the MaskGIT network was called with tokens of shape {tuple(getattr(tok, 'shape', ()))}, "
                            f"not (rows, {self.grid[0]}, {self.grid[1]})")
        tokens = tok.reshape(tok.shape[0], -1)
        if bool(((tokens < 0) | (tokens > self.mask_id)).any()):
            raise UserError(f"the MaskGIT network's tokens hold ids that are neither codes nor the mask ({self.mask_id})")
        null = self.null_conditions(tok.shape[0])["ids"]
        ids = torch.where(drop.view(-1, 1).to(null.device), null, y.view(-1, 1).to(null.device) + self.codebook_size + 1)
        return tokens, Conditions(ids=ids)

    def attach_feature_site(self):
        return self.net.last_layer, False  # its output: the head's input at every row, the class token's last

    def attach_features(self, captured, args, kwargs):
        return captured[:, : self.num_tokens], captured

    def attach_output(self, logits, args, kwargs):
        return logits


# -- random-weight twins in the official layout (tests, GPU timing) -----------------------------
def _random_vq_params(grid: int, codebook: int, vq_ch: int, vq_ch_mult, z_channels: int) -> dict:
    res = grid * 2 ** (len(vq_ch_mult) - 1)
    return {"embed_dim": z_channels, "n_embed": codebook,
            "ddconfig": {"double_z": False, "z_channels": z_channels, "resolution": res, "in_channels": 3, "out_ch": 3,
                         "ch": vq_ch, "ch_mult": list(vq_ch_mult), "num_res_blocks": 1, "attn_resolutions": [grid],
                         "dropout": 0.0},
            "lossconfig": {"target": "taming.modules.losses.vqperceptual.DummyLoss"}}


def write_random_checkpoint(folder: Path, *, hidden: int = 32, depth: int = 2, heads: int = 2, mlp_dim: int = 64,
                            grid: int = 4, codebook: int = 16, nclass: int = 10, vq_ch: int = 32,
                            vq_ch_mult=(1, 1), z_channels: int = 8, seed: int = 0, std: float = 0.5) -> dict:
    """Write `maskgit.pth` (a dict with `model_state_dict`) and `vqgan/{last.ckpt, model.yaml}`.

    Returns the `--set` overrides that make the maskgit recipe load it.
    """
    folder = Path(folder)
    (folder / "vqgan").mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():  # the modules' own initialisation (the 1-D tensors kept below) seeded too
        torch.manual_seed(seed)
        net = MaskGITTransformer(hidden, depth, heads, mlp_dim, grid, codebook, nclass)
        vq = TamingVQDecoder(params := _random_vq_params(grid, codebook, vq_ch, vq_ch_mult, z_channels))
    sd = {k: torch.randn(v.shape, generator=g) * std if k.endswith(("weight", "emb", "bias")) and v.dim() > 1 else v
          for k, v in net.state_dict().items()}
    torch.save({"iter": 0, "global_epoch": 0, "model_state_dict": sd, "optimizer_state_dict": {}}, folder / "maskgit.pth")
    (folder / "vqgan" / "model.yaml").write_text(yaml.safe_dump({"model": {"base_learning_rate": 4.5e-6,
        "target": "taming.models.vqgan.VQModel", "params": params}}))
    vsd = {k: torch.randn(v.shape, generator=g) * 0.2 if v.dim() > 1 else v for k, v in vq.state_dict().items()}
    vsd["encoder.conv_in.weight"] = torch.zeros(vq_ch, 3, 3, 3)  # the encoder is in the file too, unused here
    torch.save({"state_dict": vsd, "global_step": 0}, folder / "vqgan" / "last.ckpt")
    return {"base.checkpoint": str(folder / "maskgit.pth"), "base.vqgan": str(folder / "vqgan"),
            "base.hidden_size": hidden, "base.depth": depth, "base.heads": heads, "base.mlp_dim": mlp_dim,
            "base.grid": grid, "base.codebook_size": codebook, "base.num_classes": nclass}
