"""Device and numeric precision choices shared by training and translation."""

from __future__ import annotations

import contextlib
from typing import Literal

import torch

from nmt.errors import NmtError

Precision = Literal["fp32", "bf16", "fp16"]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise NmtError("device 'cuda' was asked for but no CUDA GPU is available; use cpu or auto")
    if name not in ("cpu", "cuda"):
        raise NmtError(f"unknown device '{name}'; use auto, cpu or cuda")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> Precision:
    """`auto`: bf16 on GPUs that support it, fp16 (with loss scaling) on older GPUs, fp32 on CPU."""
    if name == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if name not in ("fp32", "bf16", "fp16"):
        raise NmtError(f"unknown precision '{name}'; use auto, fp32, bf16 or fp16")
    if name == "fp16" and device.type != "cuda":
        raise NmtError("precision fp16 needs a CUDA GPU; use fp32 (or bf16) on CPU")
    return name  # type: ignore[return-value]


def autocast(device: torch.device, precision: Precision) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)
