"""Device and numeric precision choices shared by training and translation."""

from __future__ import annotations

import contextlib
import ctypes
import platform
from typing import Literal

import torch

from nmt.errors import NmtError

Precision = Literal["fp32", "bf16", "fp16"]


def resolve_device(name: str) -> torch.device:
    """The device `name` (auto, cpu or cuda) names; a process that gets a GPU here also gets
    attention kernels that suit batches of changing shapes (`avoid_cudnn_attention`)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise NmtError("device 'cuda' was asked for but no CUDA GPU is available; use cpu or auto")
    if name not in ("cpu", "cuda"):
        raise NmtError(f"unknown device '{name}'; use auto, cpu or cuda")
    if name == "cuda":
        avoid_cudnn_attention()
    return torch.device(name)


def avoid_cudnn_attention() -> None:
    """Leave cuDNN's fused attention out of F.scaled_dot_product_attention's choices.

    cuDNN builds an execution plan for every new (batch, length) shape, and batches of real
    sentences, or a beam growing one token a step, make nearly every shape new: on an H100
    (torch 2.11, cuDNN 9.19) an update of the Multi30k recipe took 397 ms on fresh batches
    against 27 ms on batches whose shapes had been seen (docs/experiments/gpu.md, "First GPU
    measurements"). The flash and memory-efficient kernels need no plan.
    """
    torch.backends.cuda.enable_cudnn_sdp(False)


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


# mallopt's parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def glibc() -> ctypes.CDLL | None:
    """The process's C library when it is glibc (musl has mallopt too, but ignores these
    settings), else None."""
    if platform.system() != "Linux":
        return None
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    return libc if hasattr(libc, "gnu_get_libc_version") else None


def reuse_freed_memory() -> bool:
    """Keep memory that tensors free inside the process, for the next tensors to reuse.

    glibc serves each block above its mmap threshold (which it raises to 32 MiB at most) with a
    fresh mapping and unmaps it on free, so a CPU training step's large activations (the
    4096 x 4000 logits are 64 MiB) come back every step as new pages, each faulting on first
    touch: 80,000 faults and 0.25 s of kernel time an update of the Multi30k recipe on one
    thread, 16% of its CPU time (docs/experiments/training-speed.md). Raising the mmap and trim thresholds makes
    freed blocks reusable: the process keeps its peak heap (RSS +25% there). Returns whether the
    setting took (False off glibc: musl, macOS, Windows).
    """
    libc = glibc()
    if libc is None:
        return False
    return bool(
        libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30) and libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
    )
