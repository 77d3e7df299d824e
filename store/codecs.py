"""Feature codecs: how float features become the integers stored in the `features` array.

    bf16   bfloat16 bits stored as uint16 (zarr has no bfloat16); lossless w.r.t. bfloat16
    fp16   IEEE half precision stored as float16
    int8   per-token absmax quantization: scale = max |x| over D (float32, stored in
           `feature_scale`), q = round(127 x / scale) in [-127, 127]; |x - q scale / 127| <= scale / 254
    delta  closed-loop coding of each step against the reconstructed previous one, on a uniform
           grid: one quantization step s per (trajectory, branch) (float32, in `feature_step`),
           s = sqrt(12) * tolerance * RMS(h_0) (h_0: that branch's step-0 features), so the RMS error
           is `tolerance` times the features' RMS; level q_t = round(x_t / s); stored are the
           zigzag-coded step differences d_t = q_t - q_{t-1} (q_{-1} = 0) as uint32. Decode:
           q = cumsum(unzigzag(d)) over steps, x = q * s; |x - q s| <= s / 2 at every step, with no
           accumulation (the encoder codes against the decoder's own reconstruction).

`encode` takes a float tensor (any device, any float dtype) of shape (..., D) and returns numpy
arrays ready to be written; `decode` turns what was read back into a float32 tensor. Encoding
runs on the tensor's device (on a GPU that halves or quarters the bytes sent to the host). The
delta codec is stateful across steps: `DeltaEncoder` codes a batch's steps in order.

Stored values never take the array's fill value (`FeatureCodec.fill`: a NaN bit pattern for
the float codecs, -128 for int8, 0xFFFFFFFF for delta), so a chunk that was never written, or
was lost, decodes to NaN (or is flagged) rather than to plausible zeros.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from migmcut.errors import StoreError, arg

DEFAULT_TOLERANCE = 0.1  # delta: RMS error / RMS of the features
TOLERANCE_RANGE = (1e-4, 0.5)  # below: more bits than bf16; above: the error is as large as the signal
_LEVEL_LIMIT = 2**30  # |q| below this: step differences fit zigzag uint32 and never hit the fill value


@dataclass(frozen=True)
class FeatureCodec:
    name: str
    dtype: str  # numpy dtype of the stored `features` array
    logical_dtype: str  # what the stored values mean
    fill: int | float  # the array's fill value: never produced by `encode`
    scale: str | None = None  # the side array beside `features`: "feature_scale" (int8), "feature_step" (delta)

    @property
    def has_scale(self) -> bool:
        return self.scale is not None

    @property
    def itemsize(self) -> int:
        return np.dtype(self.dtype).itemsize


CODECS = {
    "bf16": FeatureCodec("bf16", "uint16", "bfloat16", 0x7FC0),  # 0x7FC0: bfloat16 quiet NaN
    "fp16": FeatureCodec("fp16", "float16", "float16", float("nan")),
    "int8": FeatureCodec("int8", "int8", "int8-absmax", -128, "feature_scale"),
    "delta": FeatureCodec("delta", "uint32", "zigzag step differences of round(x / feature_step)", 0xFFFFFFFF,
                          "feature_step"),
}


def get_codec(name: str) -> FeatureCodec:
    if name not in CODECS:
        raise StoreError(f"unknown codec {name!r}: choose one of {', '.join(CODECS)}")
    return CODECS[name]


def check_tolerance(tolerance) -> float:
    lo, hi = TOLERANCE_RANGE
    if not isinstance(tolerance, (int, float)) or not lo <= tolerance <= hi:  # NaN fails too
        raise StoreError(
            f"delta tolerance must be between {lo:g} and {hi:g} (the RMS error relative to the features' RMS; "
            f"default {DEFAULT_TOLERANCE}), got {tolerance}"
        )
    return float(tolerance)


@torch.no_grad()
def encode(x: torch.Tensor, codec: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Float features (..., D) -> (values (..., D) in the codec's dtype, scale (...) float32 or None).

    delta codes whole step sequences at the default tolerance: x (..., steps, L, D) -> (differences,
    steps (...)); see `encode_steps` for another tolerance, `DeltaEncoder` for one step at a time.
    """
    c = get_codec(codec)
    if c.name == "delta":
        return encode_steps(x)
    if c.name == "bf16":
        return x.to(torch.bfloat16).view(torch.int16).cpu().numpy().view(np.uint16), None
    if c.name == "fp16":
        return x.to(torch.float16).cpu().numpy(), None
    x = x.float()
    scale = x.abs().amax(dim=-1, keepdim=True)
    q = torch.round(x * 127.0 / scale.clamp_min(torch.finfo(torch.float32).tiny)).clamp_(-127, 127)
    return q.to(torch.int8).cpu().numpy(), scale.squeeze(-1).cpu().numpy()


class DeltaEncoder:
    """Closed-loop step coder for one batch: `step(x_t)` for t = 0, 1, ... of features (..., L, D).

    The quantization step of each (...) row comes from its step-0 features; every later step is
    coded against the reconstruction the decoder will have, so errors never accumulate.
    """

    def __init__(self, tolerance: float = DEFAULT_TOLERANCE):
        self.tolerance = check_tolerance(tolerance)
        self.step_size: torch.Tensor | None = None  # (...) float32
        self.level: torch.Tensor | None = None  # (..., L, D) int64: q_{t-1}

    @torch.no_grad()
    def step(self, x: torch.Tensor) -> np.ndarray:
        """Features of the next step (..., L, D) -> zigzag differences (..., L, D) uint32."""
        x = x.float()
        if not torch.isfinite(x).all():
            raise ValueError("features hold NaN or inf: the delta codec cannot code them")
        if self.step_size is None:
            rms = x.square().mean(dim=(-2, -1)).sqrt()
            s = (math.sqrt(12.0) * self.tolerance * rms).to(torch.float32)
            self.step_size = torch.where(s > 0, s, torch.full_like(s, math.sqrt(12.0) * self.tolerance))
            self.level = torch.zeros(x.shape, dtype=torch.int64, device=x.device)
        q = torch.round(x / self.step_size[..., None, None]).to(torch.int64)
        if q.abs().max() >= _LEVEL_LIMIT:
            raise StoreError(
                f"features reach {float(x.abs().max()):.3g}, beyond the delta codec's range at tolerance "
                f"{self.tolerance:g}: record with a larger {arg('tolerance')} or another {arg('codec')}"
            )
        d = q - self.level
        self.level = q
        return ((d << 1) ^ (d >> 63)).to(torch.int32).cpu().numpy().view(np.uint32)

    def steps(self) -> np.ndarray:
        """Quantization step per (...) row, float32 (after the first `step`)."""
        return self.step_size.cpu().numpy()


def encode_steps(x: torch.Tensor, tolerance: float = DEFAULT_TOLERANCE) -> tuple[np.ndarray, np.ndarray]:
    """Delta-code whole trajectories: x (..., steps, L, D) -> (differences uint32 same shape, step (...))."""
    enc = DeltaEncoder(tolerance)
    out = np.stack([enc.step(x[..., t, :, :]) for t in range(x.shape[-3])], axis=-3)
    return out, enc.steps()


def delta_levels(values) -> np.ndarray:
    """Stored zigzag differences (..., steps, L, D) -> integer levels q (same shape; int16 when they fit)."""
    z = np.asarray(values, dtype=np.uint32)
    q = (z >> 1).view(np.int32)  # |d| < 2**31 and |q| < 2**30: int32 throughout
    q ^= -(z & 1).view(np.int32)
    for t in range(1, q.shape[-3]):  # in place, step by step: ~10x numpy's cumsum over a middle axis
        q[..., t, :, :] += q[..., t - 1, :, :]
    if q.size and max(-int(q.min()), int(q.max())) < 2**15:
        return q.astype(np.int16)
    return q


def decode(values, scale, codec: str) -> torch.Tensor:
    """Stored values (..., D) (+ scale (...) for int8) -> float32 tensor (..., D).

    delta: values (..., steps, L, D) as stored (differences) and scale (...) the quantization step.
    """
    c = get_codec(codec)
    if c.name == "delta":
        if scale is None:
            raise StoreError("delta features need their feature_step")
        return from_levels(delta_levels(values), scale)
    v = torch.as_tensor(np.ascontiguousarray(values))
    if c.name == "bf16":
        return v.view(torch.int16).view(torch.bfloat16).float()
    if c.name == "fp16":
        return v.float()
    if scale is None:
        raise StoreError("int8 features need their feature_scale")
    s = torch.as_tensor(np.ascontiguousarray(scale), dtype=torch.float32)
    return v.float() * (s / 127.0).unsqueeze(-1)


def from_levels(levels, step) -> torch.Tensor:
    """Delta levels q (leading axes of `step`, then any of steps, L, D) times their quantization step."""
    s = torch.as_tensor(np.ascontiguousarray(step), dtype=torch.float32)
    q = torch.from_numpy(np.ascontiguousarray(levels)).float()
    return q * s.reshape(s.shape + (1,) * (q.ndim - s.ndim))


def is_fill(values, codec: str) -> np.ndarray:
    """Boolean mask (...) over the leading axes of (..., D): True where a vector holds the fill value."""
    c = get_codec(codec)
    values = np.asarray(values)
    if c.name == "fp16":
        return np.isnan(values).all(axis=-1)
    return (values == c.fill).all(axis=-1)
