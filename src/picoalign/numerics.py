"""How this process's fp32 math rounds: MKL's reproducible mode and the code path MKL really
runs, recorded by every feature cache and study row (``math``, ``mkl``) so that results from
differently rounding machines are told apart. Not the method: the core never reads it.
"""

from __future__ import annotations

import ctypes
import functools
import os
from pathlib import Path

import torch

# The MKL setting under which fp32 GEMMs give the same bits at any thread count (Intel's
# "conditional numerical reproducibility", AVX2 code path; honoured on Intel CPUs only, see
# mkl_branch): MKL reads it when it loads, so it must be in the environment before Python
# starts.
STRICT_MATH_ENV = {"MKL_CBWR": "AVX2,STRICT"}


def strict_math() -> bool:
    """True when this process runs MKL's reproducible AVX2 path (:data:`STRICT_MATH_ENV`).

    Why it matters: without it, MKL picks its GEMM blocking by CPU and thread count, so the
    same fp32 run rounds differently at 1 and 2 threads or on another CPU, and over a few
    thousand steps the rounding grows into a different model (a few rSum apart on emoji:
    ``benchmarks/rounding.py``). With it the runs of ``rounding.py`` are bit-identical at 1 and
    2 threads, at the price of AVX-512/AMX speed on CPUs that have them.
    """
    value = os.environ.get("MKL_CBWR", "")
    return value.replace(" ", "").upper() == STRICT_MATH_ENV["MKL_CBWR"]


# MKL's names for the values of mkl_cbwr_get(MKL_CBWR_BRANCH) (its "Named Constants for CNR
# Control"); the STRICT flag is a separate bit of mkl_cbwr_get(MKL_CBWR_ALL)
_MKL_BRANCHES = {0: "off", 1: "off", 2: "auto", 3: "compatible", 4: "sse2", 6: "ssse3",
                 7: "sse4_1", 8: "sse4_2", 9: "avx", 10: "avx2", 12: "avx512"}  # fmt: skip
_MKL_CBWR_STRICT = 0x10000


@functools.cache
def mkl_branch() -> str:
    """The code path MKL really runs (``avx2``, ``auto``, ``off``…; ``unknown`` where torch
    has no MKL to ask), with ``,strict`` when its strict mode is on.

    Why ask instead of reading the variable: MKL honours ``MKL_CBWR=AVX2`` on Intel CPUs only.
    On others (AMD) it silently runs its ``auto`` branch instead — reproducible on that
    machine at any thread count, but not the bits an Intel CPU gives (measured:
    docs/results.md, "Rounding"). A row records this, so rows from the two are told apart.
    """
    if not torch.backends.mkl.is_available():
        return "unknown"
    lib = Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"
    try:
        get = ctypes.CDLL(str(lib)).mkl_serv_cbwr_get
    except (OSError, AttributeError):  # no such library (macOS, Windows) or no MKL in it
        return "unknown"
    get.restype, get.argtypes = ctypes.c_int, [ctypes.c_int]
    branch, flags = get(1), get(-1)  # MKL_CBWR_BRANCH, MKL_CBWR_ALL
    name = _MKL_BRANCHES.get(branch, f"branch-{branch}")
    return name + (",strict" if flags & _MKL_CBWR_STRICT else "")


def math_mode() -> str:
    """``"avx2-strict"`` or ``"native"``: the name a row or a feature cache records."""
    return "avx2-strict" if strict_math() else "native"
