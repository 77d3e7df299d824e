"""Feature codecs: how float features become the integers stored in the `features` array.

    bf16  bfloat16 bits stored as uint16 (zarr has no bfloat16); lossless w.r.t. bfloat16
    fp16  IEEE half precision stored as float16
    int8  per-token absmax quantization: scale = max |x| over D (float32, stored in
          `feature_scale`), q = round(127 x / scale) in [-127, 127]; |x - q scale / 127| <= scale / 254

`encode` takes a float tensor (any device, any float dtype) of shape (..., D) and returns numpy
arrays ready to be written; `decode` turns what was read back into a float32 tensor. Encoding
runs on the tensor's device (on a GPU that halves or quarters the bytes sent to the host).

Stored values never take the array's fill value (`FeatureCodec.fill`: a NaN bit pattern for
the float codecs, -128 for int8), so a chunk that was never written, or was lost, decodes to
NaN rather than to plausible zeros.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from migmcut.errors import StoreError


@dataclass(frozen=True)
class FeatureCodec:
    name: str
    dtype: str  # numpy dtype of the stored `features` array
    logical_dtype: str  # what the stored values mean
    fill: int | float  # the array's fill value: never produced by `encode`
    has_scale: bool  # int8: a `feature_scale` array beside `features`

    @property
    def itemsize(self) -> int:
        return np.dtype(self.dtype).itemsize


CODECS = {
    "bf16": FeatureCodec("bf16", "uint16", "bfloat16", 0x7FC0, False),  # 0x7FC0: bfloat16 quiet NaN
    "fp16": FeatureCodec("fp16", "float16", "float16", float("nan"), False),
    "int8": FeatureCodec("int8", "int8", "int8-absmax", -128, True),
}


def get_codec(name: str) -> FeatureCodec:
    if name not in CODECS:
        raise StoreError(f"unknown codec {name!r}: choose one of {', '.join(CODECS)}")
    return CODECS[name]


@torch.no_grad()
def encode(x: torch.Tensor, codec: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Float features (..., D) -> (values (..., D) in the codec's dtype, scale (...) float32 or None)."""
    c = get_codec(codec)
    if c.name == "bf16":
        return x.to(torch.bfloat16).view(torch.int16).cpu().numpy().view(np.uint16), None
    if c.name == "fp16":
        return x.to(torch.float16).cpu().numpy(), None
    x = x.float()
    scale = x.abs().amax(dim=-1, keepdim=True)
    q = torch.round(x * 127.0 / scale.clamp_min(torch.finfo(torch.float32).tiny)).clamp_(-127, 127)
    return q.to(torch.int8).cpu().numpy(), scale.squeeze(-1).cpu().numpy()


def decode(values, scale, codec: str) -> torch.Tensor:
    """Stored values (..., D) (+ scale (...) for int8) -> float32 tensor (..., D)."""
    c = get_codec(codec)
    v = torch.as_tensor(np.ascontiguousarray(values))
    if c.name == "bf16":
        return v.view(torch.int16).view(torch.bfloat16).float()
    if c.name == "fp16":
        return v.float()
    if scale is None:
        raise StoreError("int8 features need their feature_scale")
    s = torch.as_tensor(np.ascontiguousarray(scale), dtype=torch.float32)
    return v.float() * (s / 127.0).unsqueeze(-1)


def is_fill(values, codec: str) -> np.ndarray:
    """Boolean mask (...) over the leading axes of (..., D): True where a vector holds the fill value."""
    c = get_codec(codec)
    values = np.asarray(values)
    if c.name == "fp16":
        return np.isnan(values).all(axis=-1)
    return (values == c.fill).all(axis=-1)
