"""The tiny-shapes VQ tokenizer: a small diffusers `VQModel` mapping 64x64 RGB to 16x16 tokens."""

from __future__ import annotations

import torch
from diffusers import VQModel

VQ_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 3,  # two downsamplings: 64 -> 16
    up_block_types=("UpDecoderBlock2D",) * 3,
    block_out_channels=(16, 32, 64),
    layers_per_block=1,
    latent_channels=16,
    num_vq_embeddings=256,
    vq_embed_dim=16,
    norm_num_groups=8,
    sample_size=64,
    mid_block_add_attention=False,
    lookup_from_codebook=True,
)


def new_tokenizer() -> VQModel:
    return VQModel(**VQ_CONFIG)


def to_tensor(images) -> torch.Tensor:
    """uint8 (B, H, W, 3) numpy/tensor -> float (B, 3, H, W) in [-1, 1]."""
    x = torch.as_tensor(images).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float (B, 3, H, W) in [-1, 1] -> uint8 (B, H, W, 3)."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)


@torch.no_grad()
def encode(vq: VQModel, images: torch.Tensor) -> torch.Tensor:
    """float images (B, 3, 64, 64) -> token ids (B, 256)."""
    z = vq.encode(images).latents
    _, _, (_, _, idx) = vq.quantize(z)
    return idx.view(images.shape[0], -1)


@torch.no_grad()
def decode(vq: VQModel, tokens: torch.Tensor, grid: int = 16) -> torch.Tensor:
    """token ids (B, grid*grid) -> float images (B, 3, 64, 64) in [-1, 1]."""
    b = tokens.shape[0]
    shape = (b, grid, grid, vq.config.vq_embed_dim)
    return vq.decode(tokens, force_not_quantize=True, shape=shape).sample
