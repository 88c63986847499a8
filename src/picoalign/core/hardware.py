"""What this machine multiplies natively, asked once: the one probe of low-precision support.

On CPUs without bf16/fp16 matrix units (AVX2-only: torch then emulates the low-precision GEMM
far slower than fp32) the scoring rounds operands to the low precision and multiplies in
fp32 — the numerics of a native bf16 GEMM with fp32 accumulation, at fp32 speed.
"""

from __future__ import annotations

import functools

import torch


@functools.cache
def native_low_precision(dtype: torch.dtype = torch.bfloat16) -> bool:
    """Whether this CPU multiplies ``dtype`` matrices natively (AVX512-BF16/FP16, AMX)."""
    probe = {
        torch.bfloat16: "_is_mkldnn_bf16_supported",
        torch.float16: "_is_mkldnn_fp16_supported",
    }.get(dtype)
    try:
        return bool(getattr(torch.ops.mkldnn, probe)()) if probe else False
    except (AttributeError, RuntimeError):
        return False


def gemm_dtype(compute_dtype: torch.dtype, device: torch.device) -> tuple[torch.dtype, bool]:
    """(dtype of the GEMM, whether operands are first rounded to ``compute_dtype``)."""
    low = compute_dtype in (torch.bfloat16, torch.float16)
    if low and device.type == "cpu" and not native_low_precision(compute_dtype):
        return torch.float32, True
    return compute_dtype, False
