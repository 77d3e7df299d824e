"""Devices and dtypes by name, as every entry point takes them: None / "cuda:1", "auto" / "bf16"."""

from __future__ import annotations

import torch

from migmcut.errors import UserError, arg

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """None: cuda if available, else cpu."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UserError(f"{arg('device', repr(device))} is not a device (use cpu, cuda or cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{arg('device', device)}: CUDA is not available on this machine (use {arg('device', 'cpu')})")
    return dev


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """"auto": bf16 on a GPU, fp32 elsewhere."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise UserError(f"{arg('dtype', repr(dtype))}: choose auto, fp32, bf16 or fp16")
    return DTYPES[dtype]


def placement(device=None, dtype: str | torch.dtype = "auto", base=None) -> tuple[torch.device, torch.dtype]:
    """(device, dtype) for a job: None / "auto" keep a given base's, else as `resolve_device` / `resolve_dtype`."""
    if device is None and base is not None:
        device = base.device
    device = resolve_device(device)
    if isinstance(dtype, str) and dtype == "auto" and base is not None:
        return device, next(base.parameters()).dtype
    return device, resolve_dtype(dtype, device)
