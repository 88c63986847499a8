"""Device and precision choices, in one place so no other module calls ``.cuda()``."""

from __future__ import annotations

import contextlib
import functools
import warnings
from typing import Any

import torch

from picoalign.core.hardware import native_low_precision
from picoalign.fileio import first_line
from picoalign.numerics import math_mode, mkl_branch


def cpu_has_fast_bf16() -> bool:
    """True where the CPU multiplies bf16 in hardware (AMX or AVX512-BF16): the core's one
    probe. Elsewhere (e.g. AVX2-only CPUs) bf16 matmuls are emulated and several times
    *slower* than fp32, so bf16 autocast only pays off where this is True."""
    return native_low_precision(torch.bfloat16)


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
    if device.type == "meta":
        raise ValueError(f"--device {name}: the meta device holds no data; give cpu, cuda or mps")
    if device.type == "cuda":  # no probe: a tensor there makes a CUDA context (0.3-0.5 GB)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(  # on GPU 0 in every torchrun rank, kept for the whole run
                f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
        return device
    if device.type != "cpu":  # mps, xpu ...: a tensor there now, not after encoding
        try:
            torch.empty(1, device=device)
        except (RuntimeError, AssertionError) as e:  # xpu's "not compiled" is an assertion
            why = first_line(e).split(". ")[0][:160]  # torch's first sentence, not its backend list
            raise ValueError(f"--device {name}: not available on this machine ({why})") from None
    return device


def amp_enabled(device: torch.device, amp: bool | str = "auto") -> bool:
    """The AMP policy: whether bf16 autocast is used for ``amp`` on ``device``.

    ``"auto"``: on for CUDA GPUs with bf16 units (compute capability 8.0 on), off elsewhere —
    older GPUs emulate bf16, and on a CPU a run's numbers must not depend on which CPU it
    lands on. An explicit ``True`` on a CPU is honoured only where the CPU has bf16
    units (AMX, AVX512-BF16); elsewhere bf16 is emulated (~50× slower than fp32), so it runs
    fp32 and warns once. Only the encoders and heads run under autocast: the max-mean
    reductions, the loss and PICO's statistics are computed in fp32 outside it (the training
    loop casts the embeddings back to fp32), because bf16 there changes rankings.
    """
    if amp == "auto":  # not on a GPU without bf16 units (before Ampere: T4, V100), where
        return device.type == "cuda" and cuda_has_fast_bf16(device)  # it is emulated
    if not amp:
        return False
    if device.type == "cuda":
        return True
    if device.type == "cpu" and cpu_has_fast_bf16():
        return True
    _warn_no_bf16(device.type)
    return False


def cuda_has_fast_bf16(device: torch.device) -> bool:
    """Whether this CUDA GPU multiplies bf16 natively (compute capability 8.0 and later)."""
    with torch.cuda.device(device):
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))


@functools.cache
def _warn_no_bf16(device_type: str) -> None:
    warnings.warn(
        f"amp=true on {device_type}: this {device_type} has no bf16 units (AMX/AVX512-BF16), "
        "so training runs in fp32",
        RuntimeWarning,
        stacklevel=3,
    )


def autocast(device: torch.device, amp: bool | str = "auto") -> contextlib.AbstractContextManager:
    """bf16 autocast where :func:`amp_enabled` says so; else a no-op."""
    if amp_enabled(device, amp):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def numerics(device: torch.device) -> dict[str, Any]:
    """What a run's floating-point results depend on besides its config and seed (recorded
    with every run and study row, so that two results can be told apart by their math)."""
    info: dict[str, Any] = {"device": device.type, "torch": torch.__version__}
    if device.type == "cpu":
        info.update(
            math=math_mode(),
            mkl=mkl_branch(),  # what MKL runs: "auto,strict" where it refuses AVX2 (AMD)
            cpu_capability=torch.backends.cpu.get_cpu_capability(),
            threads=torch.get_num_threads(),
        )
    return info
