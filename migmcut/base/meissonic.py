"""Meissonic (viiika/Meissonic): a 1B masked transformer over 64x64 VQ tokens with a CLIP text encoder.

Reference: viiika/Meissonic aeba85e8db9cc4831f0766d226e82548b6ebe76a, `src/transformer.py`
(`Transformer2DModel`), `src/pipeline.py` (`Pipeline.__call__`), `src/scheduler.py` (`Scheduler`,
line for line diffusers' `AmusedScheduler`) and `inference.py` (the settings). The published
directory (MeissonFlow/Meissonic) is diffusers' Hub layout:

    transformer/   Transformer2DModel: config.json + diffusion_pytorch_model*.safetensors
    vqvae/         VQModel (diffusers)
    text_encoder/  CLIPTextModelWithProjection (inference.py loads laion/CLIP-ViT-H-14-laion2B-s32B-b79K
                   in its place "for stable sampling": `base.text_encoder` names such a directory)
    tokenizer/     CLIPTokenizer
    scheduler/     Scheduler (mask_token_id, masking_schedule)

The transformer has no diffusers class of its own (the diffusers pipeline PR is still open); it is
built here from diffusers' modules, with the reference's parameter names: Flux's dual-stream and
single-stream blocks (`FluxTransformerBlock`, `FluxSingleTransformerBlock`: the reference's
`TransformerBlock` / `SingleTransformerBlock` are the same blocks), `FluxPosEmbed`, the timestep +
pooled-text embedding, UViT's token embedding (`UVit2DConvEmbed`) and head (`ConvMlmLayer`), and a
2x2 convolution down / transposed-convolution up around the transformer (`Downsample2D`,
`Upsample2D` with RMSNorm). Its forward follows `Transformer2DModel.forward`: micro-conditions as
sinusoids appended to the pooled text embedding (`cond_embed`), the scheduler timestep x 1000 in the
AdaLN embedding, rotary ids (0, row, column) for the image positions and zeros for the 77 text ones.

What `Pipeline.__call__` feeds it, migmcut feeds it: the prompt tokenized to 77 (padding and
truncation), the text encoder's `hidden_states[-2]` and `text_embeds`, micro-conditions (width,
height, crop, aesthetic score 6), the negative prompt's as the unconditional branch, and the
timestep `scheduler.timesteps[t]` = N - 1 - t, which the sampler hands over in the conditions
(`sampler.timestep: countdown`; without it, as in bench's timing of one forward, the transformer is
told 0). The rotary ids follow the pipeline's rule: at height 1024 a (h/2, w/2) grid, at any other
height (h, w); the transformer must have as many positions (2x2 downsampling at 1024, none
elsewhere), which is what the published checkpoint runs. Features are the input of `mlm_layer`
(after the up block), the head `mlm_layer` (pointwise) on any positions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from migmcut.base.condition_sources import ConditionSource, recipe_prompts
from migmcut.base.amused import ClipVQBase, clip_conditions
from migmcut.base.conditions import Conditions
from migmcut.base.interface import fingerprint_of
from migmcut.base.statedict import load_component, load_into, read_tensors, require_path
from migmcut.errors import CheckpointError, UserError

COMPONENTS = ("transformer", "vqvae", "text_encoder", "tokenizer", "scheduler")
MAX_LENGTH = 77  # Pipeline.__call__ tokenizes to max_length=77, whatever the tokenizer says
EPS = 1e-6  # Transformer2DModel: layer_norm_eps, ln_elementwise_affine True, use_bias False
MICRO_DIM = 256  # per micro-condition (5 of them: 1280)
# transformer/config.json values this module implements (anything else is refused by name)
SUPPORTED = {"guidance_embeds": False, "patch_size": 1}


@dataclass(kw_only=True)
class MeissonicConfig:
    """Recipe section `base` for `kind: meissonic`.

    `model`: the local Meissonic directory (transformer/, vqvae/, text_encoder/, tokenizer/,
    scheduler/); required, `null` means "not set yet". `text_encoder`: another CLIPTextModelWithProjection
    directory used instead of `model/text_encoder` (inference.py uses laion's CLIP-ViT-H-14). The image
    size and micro-conditions default to inference.py's (1024 x 1024, crop (0, 0), aesthetic score 6);
    `negative_prompt` is the unconditional branch's prompt (the pipeline's default "").
    """

    kind: str = "meissonic"
    model: str | None
    text_encoder: str | None = None
    height: int = 1024
    width: int = 1024
    negative_prompt: str = ""
    crop_coords: list[int] = field(default_factory=lambda: [0, 0])
    aesthetic_score: float = 6.0


class MeissonicTransformer(nn.Module):
    """`Transformer2DModel` of the reference, from diffusers' modules, with its parameter names."""

    def __init__(self, c: dict):
        super().__init__()
        from diffusers.models.downsampling import Downsample2D
        from diffusers.models.embeddings import CombinedTimestepTextProjEmbeddings, TimestepEmbedding
        from diffusers.models.normalization import RMSNorm
        from diffusers.models.transformers.transformer_flux import (FluxPosEmbed, FluxSingleTransformerBlock,
                                                                    FluxTransformerBlock)
        from diffusers.models.unets.uvit_2d import ConvMlmLayer, UVit2DConvEmbed
        from diffusers.models.upsampling import Upsample2D

        self.config = c
        heads, head_dim = int(c["num_attention_heads"]), int(c["attention_head_dim"])
        D = self.inner_dim = heads * head_dim
        self.pos_embed = FluxPosEmbed(theta=10000, axes_dim=list(c["axes_dims_rope"]))
        self.time_text_embed = CombinedTimestepTextProjEmbeddings(embedding_dim=D, pooled_projection_dim=c["pooled_projection_dim"])
        self.context_embedder = nn.Linear(c["joint_attention_dim"], D)
        self.transformer_blocks = nn.ModuleList(FluxTransformerBlock(D, heads, head_dim) for _ in range(c["num_layers"]))
        self.single_transformer_blocks = nn.ModuleList(FluxSingleTransformerBlock(D, heads, head_dim)
                                                       for _ in range(c["num_single_layers"]))
        self.embed = UVit2DConvEmbed(D, D, c["vocab_size"], True, EPS, False)
        self.mlm_layer = ConvMlmLayer(D, D, False, True, EPS, c["codebook_size"])
        self.cond_embed = TimestepEmbedding(5 * MICRO_DIM + c["pooled_projection_dim"], D, sample_proj_bias=False)
        self.encoder_proj_layer_norm = RMSNorm(D, EPS, True)
        self.project_to_hidden_norm = RMSNorm(D, EPS, True)
        self.project_to_hidden = nn.Linear(D, D, bias=False)
        self.project_from_hidden_norm = RMSNorm(D, EPS, True)
        self.project_from_hidden = nn.Linear(D, D, bias=False)
        self.down_block, self.up_block = nn.Module(), nn.Module()
        self.down_block.downsample = Downsample2D(D, use_conv=True, padding=0, name="Conv2d_0", kernel_size=2,
                                                  norm_type="rms_norm", eps=EPS, elementwise_affine=True,
                                                  bias=False) if c["downsample"] else None
        self.up_block.upsample = Upsample2D(D, use_conv_transpose=True, kernel_size=2, padding=0, name="conv",
                                            norm_type="rms_norm", eps=EPS, elementwise_affine=True, bias=False,
                                            interpolate=False) if c["upsample"] else None

    def forward(self, ids: torch.Tensor, hidden: torch.Tensor, pooled: torch.Tensor, micro: torch.Tensor,
                timestep: torch.Tensor, img_ids: torch.Tensor, txt_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ids (B, h, w) -> (logits (B, K, h, w), the head's input (B, D, h, w))."""
        from diffusers.models.embeddings import get_timestep_embedding

        B = ids.shape[0]
        micro = get_timestep_embedding(micro.flatten(), MICRO_DIM, flip_sin_to_cos=True, downscale_freq_shift=0)
        pooled = torch.cat([pooled, micro.reshape(B, -1)], dim=1).to(self.project_to_hidden.weight.dtype)
        pooled = self.cond_embed(pooled).to(hidden.dtype)
        x = self.embed(ids)
        context = self.encoder_proj_layer_norm(self.context_embedder(hidden))
        if self.down_block.downsample is not None:
            x = self.down_block.downsample(x)
        _, C, H, W = x.shape
        x = self.project_to_hidden(self.project_to_hidden_norm(x.permute(0, 2, 3, 1).reshape(B, H * W, C)))
        temb = self.time_text_embed(timestep.to(x.dtype) * 1000, pooled)
        rope = self.pos_embed(torch.cat([txt_ids, img_ids], dim=0))
        for block in self.transformer_blocks:
            context, x = block(hidden_states=x, encoder_hidden_states=context, temb=temb, image_rotary_emb=rope)
        for block in self.single_transformer_blocks:
            context, x = block(hidden_states=x, encoder_hidden_states=context, temb=temb, image_rotary_emb=rope)
        x = self.project_from_hidden(self.project_from_hidden_norm(x))
        x = x.reshape(B, H, W, C).permute(0, 3, 1, 2)
        if self.up_block.upsample is not None:
            x = self.up_block.upsample(x)
        return self.mlm_layer(x), x


def read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"base.model: cannot read {what} {path}: {err}") from None


def check_transformer_config(c: dict, path: Path) -> None:
    need = ("num_attention_heads", "attention_head_dim", "num_layers", "num_single_layers", "joint_attention_dim",
            "pooled_projection_dim", "axes_dims_rope", "vocab_size", "codebook_size", "downsample", "upsample")
    missing = [k for k in need if k not in c]
    if missing:
        raise CheckpointError(f"{path} is not a Meissonic Transformer2DModel config: no {', '.join(missing)}")
    bad = [f"{k}={c.get(k)!r} (supported: {v!r})" for k, v in SUPPORTED.items() if c.get(k, v) != v]
    inner = int(c["num_attention_heads"]) * int(c["attention_head_dim"])
    if c["pooled_projection_dim"] != inner:  # cond_embed's output goes through a text_embedder of that width
        bad.append(f"pooled_projection_dim={c['pooled_projection_dim']} (supported: the inner width {inner})")
    if sum(c["axes_dims_rope"]) != c["attention_head_dim"]:
        bad.append(f"axes_dims_rope={c['axes_dims_rope']} (supported: summing to attention_head_dim {c['attention_head_dim']})")
    if bool(c["downsample"]) != bool(c["upsample"]):
        bad.append(f"downsample={c['downsample']} with upsample={c['upsample']} (supported: both or neither)")
    if bad:
        raise CheckpointError(f"{path}: unsupported Meissonic settings: {', '.join(bad)}")


class MeissonicBase(ClipVQBase):
    config_class = MeissonicConfig
    condition_source = ConditionSource("prompts", "recipe-prompts/uniform/v1", recipe_prompts)
    # no partial evaluation (recap, mlcache, hybrid): docs/real-models.md says why
    supports_partial = False

    def __init__(self, transformer: MeissonicTransformer, text_encoder, tokenizer, vq, mask_token_id: int,
                 cfg: MeissonicConfig, meta: dict):
        super().__init__(transformer, text_encoder, tokenizer, vq, transformer.config["codebook_size"], mask_token_id, cfg)
        self.grid = (cfg.height // self.vae_scale, cfg.width // self.vae_scale)
        self.feature_dim = transformer.inner_dim
        h, w = self.grid
        rows, cols = (h // 2, w // 2) if cfg.height == 1024 else (h, w)  # _prepare_latent_image_ids, as called
        img_ids = torch.zeros(rows, cols, 3)
        img_ids[..., 1] += torch.arange(rows)[:, None]
        img_ids[..., 2] += torch.arange(cols)[None, :]
        self.register_buffer("img_ids", img_ids.reshape(rows * cols, 3), persistent=False)
        self.register_buffer("txt_ids", torch.zeros(MAX_LENGTH, 3), persistent=False)
        self.negative_prompt = cfg.negative_prompt
        self.fingerprint = fingerprint_of(meta, self)

    @property
    def condition_dim(self) -> int:
        return int(self.transformer.config["joint_attention_dim"])

    # -- construction -------------------------------------------------------------------
    @classmethod
    def from_config(cls, cfg: MeissonicConfig, dtype: torch.dtype = torch.float32) -> "MeissonicBase":
        from diffusers import VQModel
        from transformers import CLIPTextModelWithProjection, CLIPTokenizer

        folder = require_path(cfg.model, "base.model", "the local Meissonic directory (MeissonFlow/Meissonic)", expect="dir")
        text_folder = (require_path(cfg.text_encoder, "base.text_encoder", "a CLIPTextModelWithProjection directory",
                                    expect="dir") if cfg.text_encoder else folder / "text_encoder")
        for name in COMPONENTS:
            if name == "text_encoder" and cfg.text_encoder:
                continue
            if not (folder / name).is_dir():
                raise UserError(f"base.model: {folder} has no {name}/ folder (a Meissonic directory holds "
                                f"{', '.join(c + '/' for c in COMPONENTS)})")
        if len(cfg.crop_coords) != 2:
            raise UserError(f"base.crop_coords must be two numbers (top, left), got {cfg.crop_coords}")
        if not (folder / "transformer" / "config.json").is_file():
            raise UserError(f"base.model: {folder}/transformer has no config.json")
        tconfig = read_json(folder / "transformer" / "config.json", "the transformer config")
        check_transformer_config(tconfig, folder / "transformer" / "config.json")
        files = sorted((folder / "transformer").glob("*.safetensors")) or sorted((folder / "transformer").glob("*.bin"))
        if not files:
            raise UserError(f"base.model: {folder}/transformer has no weights (diffusion_pytorch_model.safetensors)")
        sched_path = folder / "scheduler" / "scheduler_config.json"
        if not sched_path.is_file():
            raise UserError(f"base.model: {folder}/scheduler has no scheduler_config.json")
        sched = read_json(sched_path, "the scheduler config")
        if sched.get("masking_schedule", "cosine") != "cosine":
            raise CheckpointError(f"{sched_path}: masking_schedule {sched['masking_schedule']!r} is not supported "
                                  f"(the recipe's schedule is the Scheduler's cosine)")
        mask = sched.get("mask_token_id")
        if not isinstance(mask, int) or not tconfig["codebook_size"] <= mask < tconfig["vocab_size"]:
            raise CheckpointError(f"{sched_path}: mask_token_id {mask!r} is not an input id of the transformer beyond "
                                  f"its codebook ({tconfig['codebook_size']}..{tconfig['vocab_size'] - 1})")
        with torch.device("meta"):
            transformer = MeissonicTransformer(tconfig)
        tensors = {}
        for f in files:
            tensors |= read_tensors(f, key="base.model")
        load_into(transformer, tensors, str(folder / "transformer"), dtype=dtype)
        text_encoder = load_component("text_encoder", text_folder.parent, lambda: CLIPTextModelWithProjection.from_pretrained(
            str(text_folder), torch_dtype=dtype))
        tokenizer = load_component("tokenizer", folder, lambda: CLIPTokenizer.from_pretrained(str(folder), subfolder="tokenizer"))
        vq = load_component("vqvae", folder, lambda: VQModel.from_pretrained(str(folder), subfolder="vqvae", torch_dtype=dtype))
        if not vq.config.lookup_from_codebook:
            raise CheckpointError(f"{folder}/vqvae: lookup_from_codebook is false; Meissonic decodes token ids through the codebook")
        if vq.config.num_vq_embeddings != tconfig["codebook_size"]:
            raise CheckpointError(f"{folder}: vqvae has {vq.config.num_vq_embeddings} codes, the transformer predicts "
                                  f"{tconfig['codebook_size']}")
        width = text_encoder.config.hidden_size
        if width != tconfig["joint_attention_dim"] or text_encoder.config.projection_dim != tconfig["pooled_projection_dim"]:
            raise CheckpointError(f"{text_folder}: a text encoder of width {width} / projection "
                                  f"{text_encoder.config.projection_dim}; the transformer reads "
                                  f"{tconfig['joint_attention_dim']} / {tconfig['pooled_projection_dim']}")
        scale = 2 ** (len(vq.config.block_out_channels) - 1)
        step = scale * (2 if tconfig["downsample"] else 1)
        for key in ("height", "width"):
            value = getattr(cfg, key)
            if value < step or value % step:
                raise UserError(f"base.{key} must be a positive multiple of {step} (the VQ's downsampling {scale}"
                                f"{' x the transformer 2x2 downsampling' if tconfig['downsample'] else ''}), got {value}")
        if bool(tconfig["downsample"]) != (cfg.height == 1024):
            raise UserError(f"base.height {cfg.height}: the reference pipeline gives a transformer "
                            f"{'with' if tconfig['downsample'] else 'without'} 2x2 downsampling rotary ids for "
                            f"{'a grid of half the tokens per side only at height 1024' if tconfig['downsample'] else 'the token grid only at heights other than 1024'}")
        meta = {"kind": "meissonic", "transformer": tconfig, "text_encoder": text_encoder.config.to_dict(),
                "vqvae": dict(vq.config), "scheduler": sched,
                "config": {k: v for k, v in cfg.__dict__.items() if k not in ("model", "text_encoder")}}
        return cls(transformer, text_encoder, tokenizer, vq, mask, cfg, meta)

    # -- conditions -------------------------------------------------------------------------
    def encode_prompts(self, texts: list[str]) -> Conditions:
        """As Pipeline.__call__ encodes a prompt (and its negative prompt): Conditions(hidden=(B, 77,
        joint_attention_dim), pooled=(B, pooled_projection_dim), micro=(B, 5)); the sampler adds
        `timestep` (B,) under `sampler.timestep: countdown`."""
        c = self.cfg
        return clip_conditions(self.tokenizer, self.text_encoder, texts, MAX_LENGTH,
                               (c.width, c.height, *c.crop_coords, c.aesthetic_score))

    # -- the model --------------------------------------------------------------------------
    def forward(self, tokens: torch.Tensor, cond: Conditions) -> tuple[torch.Tensor, torch.Tensor]:
        B, (h, w) = tokens.shape[0], self.grid
        ids = torch.where(tokens == self.mask_id, self.mask_token_id, tokens).view(B, h, w)
        timestep = cond["timestep"] if "timestep" in cond.tensors else torch.zeros(B, device=tokens.device)
        logits, features = self.transformer(ids, cond["hidden"], cond["pooled"], cond["micro"], timestep,
                                            self.img_ids, self.txt_ids)
        return logits.permute(0, 2, 3, 1).reshape(B, h * w, -1), features.permute(0, 2, 3, 1).reshape(B, h * w, -1)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """mlm_layer on features (B, n, D) of any n positions: as a (B, D, 1, n) map (it is pointwise)."""
        logits = self.transformer.mlm_layer(features.transpose(1, 2)[:, :, None, :])  # (B, K, 1, n)
        return logits[:, :, 0].transpose(1, 2)

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """UVit2DConvEmbed per token (embedding, RMSNorm, the 1x1 conv as a linear map): (..., D)."""
        e = self.transformer.embed
        return torch.nn.functional.linear(e.layer_norm(e.embeddings(tokens)), e.conv.weight[:, :, 0, 0], e.conv.bias)

    # no embed_positions: the transformer's positions are rotary, so the shortcut uses its own

    def embed_conditions(self, cond: Conditions) -> torch.Tensor:
        """The CLIP hidden states the transformer attends to (B, 77, joint_attention_dim)."""
        return cond["hidden"]

    def condition_mask(self, cond: Conditions) -> None:
        return None  # every one of the 77 text positions, as the transformer's joint attention sees them
