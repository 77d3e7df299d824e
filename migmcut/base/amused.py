"""aMUSEd (Patil et al. 2024; diffusers' `AmusedPipeline`): a U-ViT over 16x16 / 32x32 VQ tokens.

The published directories (amused/amused-256, amused/amused-512) are diffusers' Hub layout and load
unchanged with diffusers' and transformers' own classes:

    transformer/   UVit2DModel               (conv embedding, conv + attention down block, transformer,
                                               up block, `mlm_layer` = 1x1 conv, RMSNorm, 1x1 conv)
    text_encoder/  CLIPTextModelWithProjection
    tokenizer/     CLIPTokenizer
    vqvae/         VQModel (lookup_from_codebook)
    scheduler/     AmusedScheduler           (mask_token_id, masking_schedule)

Conditions are what `AmusedPipeline.__call__` hands the transformer: the prompt tokenized with
padding="max_length" and truncation to the tokenizer's model_max_length, the text encoder's
`text_embeds` (pooled) and `hidden_states[-2]` (encoder hidden states), and the micro-conditions
(width, height, crop coordinates, aesthetic score); the unconditional branch is the pipeline's
default negative prompt "". migmcut's mask id (== codebook_size) is the scheduler's
`mask_token_id` (vocabulary size - 1 in the published configs). Features are the input of
`mlm_layer` (B, L, block_out_channels), read with a forward pre-hook while the model runs its own
forward, so the logits are the model's own; `head` applies `mlm_layer` to any positions (it is
pointwise: 1x1 convolutions and a per-position RMSNorm).

The sampler settings that reproduce `AmusedScheduler.step` and the pipeline's guidance are named in
the amused recipes (docs/real-models.md maps each scheduler line to its setting).
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from migmcut.base.condition_sources import ConditionSource, recipe_prompts
from migmcut.base.conditions import Conditions
from migmcut.base.interface import BaseModel, call_arguments, decode_codes, fingerprint_of
from migmcut.base.statedict import load_component, require_path
from migmcut.errors import CheckpointError, UserError

COMPONENTS = ("transformer", "vqvae", "text_encoder", "tokenizer", "scheduler")


@dataclass(kw_only=True)
class AmusedConfig:
    """Recipe section `base` for `kind: amused`.

    `model`: the local aMUSEd directory in the Hub layout (transformer/, vqvae/, text_encoder/,
    tokenizer/, scheduler/). Required in every recipe; `null` means "not set yet". `height`/`width`:
    the image size in pixels (None: the transformer's sample_size times the VQ's downsampling, the
    pipeline's default); the token grid is that over the VQ's downsampling factor. The micro-
    conditions default to the pipeline's: the image size, crop (0, 0), aesthetic score 6.
    """

    kind: str = "amused"
    model: str | None
    height: int | None = None
    width: int | None = None
    crop_coords: list[int] = field(default_factory=lambda: [0, 0])
    aesthetic_score: float = 6.0


def clip_conditions(tokenizer, text_encoder, texts: list[str], max_length: int, micro: tuple) -> Conditions:
    """A prompt batch as aMUSEd's pipeline (and Meissonic's, its descendant) encodes it: CLIP's
    penultimate hidden states, its projected pooled output, and the micro-conditions `micro` (width,
    height, crop top, crop left, aesthetic score: the pipelines' order) on every row."""
    device = next(text_encoder.parameters()).device
    ids = tokenizer(texts, return_tensors="pt", padding="max_length", truncation=True,
                    max_length=max_length).input_ids.to(device)
    out = text_encoder(ids, return_dict=True, output_hidden_states=True)
    hidden = out.hidden_states[-2]
    row = torch.tensor(micro, device=device, dtype=hidden.dtype)
    return Conditions(hidden=hidden, pooled=out.text_embeds, micro=row[None].expand(len(texts), -1).clone())


class ClipVQBase(BaseModel):
    """A base made of a token transformer, a CLIP text encoder and diffusers' VQModel (aMUSEd and its
    descendant Meissonic): its components, its conditions (the base defines `encode_prompts(texts)`;
    the unconditional branch is `negative_prompt`, encoded once per device and dtype) and its decode."""

    negative_prompt = ""  # the pipelines' default

    def __init__(self, transformer, text_encoder, tokenizer, vq, codebook_size: int, mask_token_id: int, cfg):
        super().__init__()
        self.transformer = transformer.eval().requires_grad_(False)
        self.text_encoder = text_encoder.eval().requires_grad_(False)
        self.vq = vq.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.codebook_size = int(codebook_size)
        self.mask_id = self.codebook_size
        self.mask_token_id = int(mask_token_id)
        self.vae_scale = 2 ** (len(vq.config.block_out_channels) - 1)  # the pipelines' vae_scale_factor
        self.null_cache = None

    def encode_prompts(self, texts: list[str]) -> Conditions:
        raise NotImplementedError

    @torch.no_grad()
    def encode_conditions(self, conditions: list) -> Conditions:
        if not all(isinstance(c, str) for c in conditions):
            raise UserError(f"{self.cfg.kind} is text-conditioned: give --prompt TEXT, not --class")
        if any(not c.strip() for c in conditions):
            raise UserError("empty prompt: give a description of the image")
        return self.encode_prompts(list(conditions))

    @torch.no_grad()
    def null_conditions(self, n: int) -> Conditions:
        hidden = None if self.null_cache is None else self.null_cache["hidden"]
        if hidden is None or hidden.device != self.device or hidden.dtype != self.text_encoder.dtype:
            self.null_cache = self.encode_prompts([self.negative_prompt])  # again after a move
        return Conditions(**{k: v.expand(n, *v.shape[1:]).clone() for k, v in self.null_cache.tensors.items()})

    def decode(self, tokens: torch.Tensor) -> np.ndarray:
        """As the pipelines' VQ decode (VaeImageProcessor's round to uint8 after it)."""
        return decode_codes(self.vq, tokens, self.grid, self.codebook_size)


class AmusedBase(ClipVQBase):
    config_class = AmusedConfig
    condition_source = ConditionSource("prompts", "recipe-prompts/uniform/v1", recipe_prompts)
    supports_partial = False  # UViT's conv + attention stack: no partial evaluation (recap, mlcache, hybrid)

    def __init__(self, transformer, text_encoder, tokenizer, vq, mask_token_id: int, cfg: AmusedConfig, meta: dict):
        c = transformer.config
        super().__init__(transformer, text_encoder, tokenizer, vq, c.codebook_size, mask_token_id, cfg)
        self.height = cfg.height or c.sample_size * self.vae_scale
        self.width = cfg.width or c.sample_size * self.vae_scale
        self.grid = (self.height // self.vae_scale, self.width // self.vae_scale)
        self.feature_dim = int(c.block_out_channels)
        self.fingerprint = fingerprint_of(meta, self)

    @property
    def condition_dim(self) -> int:
        return int(self.transformer.config.encoder_hidden_size)

    # -- construction -------------------------------------------------------------------
    @classmethod
    def from_config(cls, cfg: AmusedConfig, dtype: torch.dtype = torch.float32) -> "AmusedBase":
        from diffusers import AmusedScheduler, UVit2DModel, VQModel
        from transformers import CLIPTextModelWithProjection, CLIPTokenizer

        folder = require_path(cfg.model, "base.model", "the local aMUSEd directory", expect="dir")
        for name in COMPONENTS:
            if not (folder / name).is_dir():
                raise UserError(f"base.model: {folder} has no {name}/ folder (an aMUSEd directory holds "
                                f"{', '.join(c + '/' for c in COMPONENTS)})")
        if len(cfg.crop_coords) != 2:
            raise UserError(f"base.crop_coords must be two numbers (top, left), got {cfg.crop_coords}")
        scheduler = load_component("scheduler", folder, lambda: AmusedScheduler.from_pretrained(str(folder), subfolder="scheduler"))
        if scheduler.config.masking_schedule != "cosine":
            raise CheckpointError(f"{folder}/scheduler: masking_schedule {scheduler.config.masking_schedule!r} is not "
                                  f"supported (the amused sampler schedule is AmusedScheduler's cosine)")
        transformer = load_component("transformer", folder, lambda: UVit2DModel.from_pretrained(
            str(folder), subfolder="transformer", torch_dtype=dtype))
        text_encoder = load_component("text_encoder", folder, lambda: CLIPTextModelWithProjection.from_pretrained(
            str(folder), subfolder="text_encoder", torch_dtype=dtype))
        tokenizer = load_component("tokenizer", folder, lambda: CLIPTokenizer.from_pretrained(str(folder), subfolder="tokenizer"))
        vq = load_component("vqvae", folder, lambda: VQModel.from_pretrained(str(folder), subfolder="vqvae", torch_dtype=dtype))
        if not vq.config.lookup_from_codebook:
            raise CheckpointError(f"{folder}/vqvae: lookup_from_codebook is false; aMUSEd decodes token ids "
                                  f"through the codebook")
        if vq.config.num_vq_embeddings != transformer.config.codebook_size:
            raise CheckpointError(f"{folder}: vqvae has {vq.config.num_vq_embeddings} codes, the transformer "
                                  f"predicts {transformer.config.codebook_size}")
        mask = int(scheduler.config.mask_token_id)
        if not transformer.config.codebook_size <= mask < transformer.config.vocab_size:
            raise CheckpointError(f"{folder}/scheduler: mask_token_id {mask} is not an input id of the transformer "
                                  f"beyond its codebook ({transformer.config.codebook_size}.."
                                  f"{transformer.config.vocab_size - 1})")
        scale = 2 ** (len(vq.config.block_out_channels) - 1)
        for key in ("height", "width"):
            value = getattr(cfg, key)
            if value is not None and (value < scale or value % scale):
                raise UserError(f"base.{key} must be a positive multiple of the VQ's downsampling factor {scale}, "
                                f"got {value}")
        meta = {"kind": "amused", "transformer": dict(transformer.config), "text_encoder": text_encoder.config.to_dict(),
                "vqvae": dict(vq.config), "scheduler": dict(scheduler.config),
                "config": {k: v for k, v in cfg.__dict__.items() if k != "model"}}
        return cls(transformer, text_encoder, tokenizer, vq, mask, cfg, meta)

    # -- conditions -------------------------------------------------------------------------
    def encode_prompts(self, texts: list[str]) -> Conditions:
        """As AmusedPipeline.__call__ encodes a prompt (and its negative prompt): Conditions(hidden=(B, P,
        encoder_hidden_size), pooled=(B, projection_dim), micro=(B, 5)), P the tokenizer's
        model_max_length (77 for CLIP)."""
        return clip_conditions(self.tokenizer, self.text_encoder, texts, self.tokenizer.model_max_length,
                               (self.width, self.height, *self.cfg.crop_coords, self.cfg.aesthetic_score))

    # -- the model --------------------------------------------------------------------------
    def forward(self, tokens: torch.Tensor, cond: Conditions) -> tuple[torch.Tensor, torch.Tensor]:
        B, (h, w) = tokens.shape[0], self.grid
        ids = torch.where(tokens == self.mask_id, self.mask_token_id, tokens).view(B, h, w)
        seen = []
        hook = self.transformer.mlm_layer.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
        try:
            logits = self.transformer(ids, encoder_hidden_states=cond["hidden"], pooled_text_emb=cond["pooled"],
                                      micro_conds=cond["micro"])
        finally:
            hook.remove()
        features = seen[-1].permute(0, 2, 3, 1).reshape(B, h * w, -1)  # (B, C, h, w) -> (B, L, C)
        return logits.permute(0, 2, 3, 1).reshape(B, h * w, -1), features

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """mlm_layer on features (B, n, D) of any n positions: as a (B, D, 1, n) map (it is pointwise)."""
        B, n, _ = features.shape
        logits = self.transformer.mlm_layer(features.transpose(1, 2)[:, :, None, :])  # (B, K, 1, n)
        return logits[:, :, 0].transpose(1, 2)

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """UVit2DConvEmbed per token (embedding, RMSNorm, the 1x1 conv as a linear map): (..., D)."""
        e = self.transformer.embed
        x = e.layer_norm(e.embeddings(tokens))
        return torch.nn.functional.linear(x, e.conv.weight[:, :, 0, 0], e.conv.bias)

    # no embed_positions: UViT has no absolute position embedding, so the shortcut uses its own

    def embed_conditions(self, cond: Conditions) -> torch.Tensor:
        """The CLIP hidden states the transformer cross-attends to (B, P, encoder_hidden_size);
        `condition_dim` tells the shortcut their width when it differs from the feature dim."""
        return cond["hidden"]

    def condition_mask(self, cond: Conditions) -> None:
        # None: the shortcut attends to all P prompt positions, padding included, as the base does
        # (the pipeline passes no attention mask to the transformer's cross-attention), and CLIP's
        # padding positions are not empty: CLIP attends causally, so every "<|endoftext|>" after
        # the prompt carries a summary of it (the pooled embedding itself is read at the first one).
        return None

    # -- attach (migmcut.attach): AmusedPipeline calls `transformer` once per step, CFG rows batched ----
    budget_rounding = "half-even"  # the recipes' placement (amused-256/512 `sampler.budget_rounding`)

    def attach_network(self):
        return self.transformer

    def attach_read(self, args, kwargs):
        """`transformer(input_ids (R, h, w), encoder_hidden_states, pooled_text_emb, micro_conds, ...)`."""
        call = call_arguments(type(self.transformer).forward, args, kwargs)
        ids, (h, w) = call["input_ids"], self.grid
        if not torch.is_tensor(ids) or tuple(ids.shape[1:]) != (h, w):
            raise UserError(f"the transformer was called with input_ids of shape {tuple(getattr(ids, 'shape', ()))}, "
                            f"not (rows, {h}, {w}): this base's grid is {self.height}x{self.width} pixels "
                            f"(base.height, base.width); generate at that size")
        tokens = torch.where(ids == self.mask_token_id, self.mask_id, ids).reshape(ids.shape[0], h * w)
        if bool(((tokens < 0) | (tokens > self.mask_id)).any()):
            raise UserError(f"the transformer's input_ids hold ids that are neither image codes (0..{self.codebook_size - 1}) "
                            f"nor the mask token ({self.mask_token_id})")
        return tokens, Conditions(hidden=call["encoder_hidden_states"], pooled=call["pooled_text_emb"],
                                  micro=call["micro_conds"])

    def attach_feature_site(self):
        return self.transformer.mlm_layer, True  # features are mlm_layer's input, as in `forward`

    def attach_features(self, captured, args, kwargs):
        return captured.permute(0, 2, 3, 1).reshape(captured.shape[0], self.num_tokens, -1), None

    def attach_output(self, logits, args, kwargs):
        """(R, L, K) -> the transformer's own (R, K, h, w)."""
        return logits.transpose(1, 2).reshape(logits.shape[0], -1, *self.grid)


# -- random-weight twins in the Hub layout (tests, GPU timing) ------------------------------------
def write_tokenizer_files(folder: Path, words: list[str] = (), max_length: int = 16) -> Path:
    """vocab.json + merges.txt of a CLIP BPE tokenizer: every lowercase letter, digit and some
    punctuation alone and word-final, plus a merge path for each of `words`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chars = list(string.ascii_lowercase + string.digits + ".,!'-")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in chars:
        vocab[c] = len(vocab)
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    merges = []
    for word in sorted(set(words)):
        left = word[0]
        for i, c in enumerate(word[1:], 1):
            right = c + ("</w>" if i == len(word) - 1 else "")
            merged = left + right
            if merged not in vocab:
                merges.append(f"{left} {right}")
                vocab[merged] = len(vocab)
            left = merged
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(m + "\n" for m in merges))
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": max_length}))
    return folder


def write_random_checkpoint(folder: Path, *, words: list[str] = (), seed: int = 0, sample_size: int = 4,
                            downsample: bool = True, max_length: int = 16, vq_levels: int = 2,
                            encoder_hidden_size: int = 8, block_out_channels: int = 8) -> dict:
    """A tiny aMUSEd directory (diffusers' own aMUSEd test sizes: hidden 8, 8 codes, vocabulary 32,
    4x4 latents), each component written with its `save_pretrained`. -> `--set` overrides."""
    from diffusers import AmusedScheduler, UVit2DModel, VQModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    raw = write_tokenizer_files(folder / "tokenizer-files", words, max_length)
    tokenizer = CLIPTokenizer.from_pretrained(str(raw))
    tokenizer.save_pretrained(str(folder / "tokenizer"))
    torch.manual_seed(seed)
    transformer = UVit2DModel(
        hidden_size=8, use_bias=False, hidden_dropout=0.0, cond_embed_dim=8, micro_cond_encode_dim=2,
        micro_cond_embed_dim=10, encoder_hidden_size=encoder_hidden_size, vocab_size=32, codebook_size=8,
        in_channels=8, block_out_channels=block_out_channels, num_res_blocks=1, downsample=downsample,
        upsample=downsample, block_num_heads=1, num_hidden_layers=1, num_attention_heads=1, attention_dropout=0.0,
        intermediate_size=8, layer_norm_eps=1e-06, ln_elementwise_affine=True, sample_size=sample_size)
    with torch.no_grad():  # diffusers zero-inits GlobalResponseNorm: give every tensor some weight
        g = torch.Generator().manual_seed(seed)
        for p in transformer.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.3)
    transformer.save_pretrained(str(folder / "transformer"))
    text = CLIPTextModelWithProjection(CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=encoder_hidden_size, intermediate_size=37,
        layer_norm_eps=1e-05, num_attention_heads=4, num_hidden_layers=2, vocab_size=len(tokenizer),
        max_position_embeddings=max_length, projection_dim=8))
    text.save_pretrained(str(folder / "text_encoder"))
    vq = VQModel(act_fn="silu", block_out_channels=[8] * vq_levels, down_block_types=["DownEncoderBlock2D"] * vq_levels,
                 in_channels=3, latent_channels=8, layers_per_block=1, norm_num_groups=8, num_vq_embeddings=8,
                 out_channels=3, sample_size=8, up_block_types=["UpDecoderBlock2D"] * vq_levels,
                 mid_block_add_attention=False, lookup_from_codebook=True, force_upcast=False)
    vq.save_pretrained(str(folder / "vqvae"))
    AmusedScheduler(mask_token_id=31).save_pretrained(str(folder / "scheduler"))
    return {"base.model": str(folder)}
