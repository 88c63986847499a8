"""Device and precision choices, in one place so no other module calls ``.cuda()``."""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """True where the CPU multiplies bf16 in hardware (AMX or AVX512-BF16).

    Elsewhere (e.g. AVX2-only CPUs) bf16 matmuls are emulated and several times *slower* than
    fp32, so bf16 autocast and ``compute_dtype=bfloat16`` only pay off where this is True.
    """
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` → cuda if available, else mps, else cpu; otherwise the named device."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"--device: unknown device {name!r} ({e})") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
    return device


def autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager:
    """bf16 autocast where it is fast (CUDA, or a CPU with bf16 units); else a no-op."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if enabled and device.type == "cpu" and cpu_has_fast_bf16():
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def fast_compute_dtype(device: torch.device) -> torch.dtype:
    """The matmul dtype for scoring: bf16 on CUDA or bf16-capable CPUs, else fp32."""
    if device.type == "cuda" or (device.type == "cpu" and cpu_has_fast_bf16()):
        return torch.bfloat16
    return torch.float32
