"""Numerics records and MKL's reproducible mode (``training.devices``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from picoalign.numerics import STRICT_MATH_ENV, mkl_branch, strict_math
from picoalign.training.devices import numerics

# a GEMM big enough that MKL splits it over threads; the hash of its bits
GEMM = """
import hashlib, sys, torch
torch.set_num_threads(int(sys.argv[1]))
g = torch.Generator().manual_seed(0)
a, b = torch.randn(768, 1536, generator=g), torch.randn(1536, 640, generator=g)
out = a @ b
for _ in range(3):
    out = torch.tanh(out @ out.T[:, :640] / 40)
print(hashlib.sha256(out.numpy().tobytes()).hexdigest())
"""


def test_strict_math_reads_mkls_reproducibility_setting(monkeypatch) -> None:
    monkeypatch.delenv("MKL_CBWR", raising=False)
    assert not strict_math()
    monkeypatch.setenv("MKL_CBWR", "avx2, strict")
    assert strict_math()
    monkeypatch.setenv("MKL_CBWR", "AVX512")  # reproducible only on AVX-512 CPUs: not ours
    assert not strict_math()


def test_numerics_names_the_math_a_cpu_run_used(monkeypatch) -> None:
    monkeypatch.setenv("MKL_CBWR", STRICT_MATH_ENV["MKL_CBWR"])
    info = numerics(torch.device("cpu"))
    assert info["math"] == "avx2-strict" and info["threads"] == torch.get_num_threads()
    assert info["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert info["mkl"] == mkl_branch()
    monkeypatch.delenv("MKL_CBWR")
    assert numerics(torch.device("cpu"))["math"] == "native"
    assert "math" not in numerics(torch.device("meta"))  # CPU knobs only for CPU runs


@pytest.mark.skipif(not torch.backends.mkl.is_available(), reason="torch built without MKL")
def test_strict_math_gives_the_same_bits_at_one_and_two_threads() -> None:
    env = {**os.environ, **STRICT_MATH_ENV}
    hashes = {
        subprocess.run(
            [sys.executable, "-c", GEMM, str(n)], env=env, capture_output=True, text=True,
            check=True,
        ).stdout.strip()
        for n in (1, 2)
    }  # fmt: skip
    assert len(hashes) == 1


def _cpu_vendor() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "?"
    return next((ln.split(":")[1].strip() for ln in text.splitlines() if "vendor_id" in ln), "?")


@pytest.mark.skipif(not torch.backends.mkl.is_available(), reason="torch built without MKL")
def test_mkl_branch_says_which_path_mkl_really_runs() -> None:
    """MKL honours MKL_CBWR=AVX2 on Intel CPUs only; elsewhere it runs ``auto`` (its docs;
    measured on an AMD EPYC): the record must say what ran, not what was asked."""
    vendor = _cpu_vendor()
    if vendor not in ("GenuineIntel", "AuthenticAMD"):
        pytest.skip(f"CPU vendor {vendor}: no expectation")
    code = "from picoalign.numerics import mkl_branch; print(mkl_branch())"

    def branch(env: dict[str, str]) -> str:
        base = {k: v for k, v in os.environ.items() if k != "MKL_CBWR"}
        done = subprocess.run([sys.executable, "-c", code], env={**base, **env},
                              capture_output=True, text=True, check=True)  # fmt: skip
        return done.stdout.strip()

    assert branch({}) == "off"
    expected = "avx2,strict" if vendor == "GenuineIntel" else "auto,strict"
    assert branch(STRICT_MATH_ENV) == expected
    assert branch({"MKL_CBWR": "COMPATIBLE"}) == "compatible"  # honoured on every vendor


@pytest.mark.parametrize("name", ["meta", "mps", "xpu"])
def test_a_device_this_machine_lacks_is_refused_before_any_work(name: str) -> None:
    """The user report: --device mps / xpu crashed with a traceback after the data was
    encoded, and meta left a half-made run folder behind."""
    from picoalign.training.devices import resolve_device

    if name == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    if name == "xpu" and getattr(torch, "xpu", None) is not None and torch.xpu.is_available():
        pytest.skip("this machine has an XPU")
    with pytest.raises(ValueError, match=rf"^--device {name}: ") as info:
        resolve_device(name)
    assert "\n" not in str(info.value) and len(str(info.value)) < 300


def test_cuda_is_checked_without_a_context_and_a_named_gpu_is_refused_under_torchrun(
    monkeypatch,
) -> None:
    """The GPU review: resolving ``cuda`` made a tensor on GPU 0 in every torchrun rank (a CUDA
    context of 0.3-0.5 GB each, kept all run), and ``--device cuda:0`` under torchrun put
    every rank on GPU 0 (NCCL: "Duplicate GPU detected"). CUDA is stood in for."""
    from picoalign.training.devices import resolve_device
    from picoalign.training.distributed import DistContext, local_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    made = []
    real_empty = torch.empty
    monkeypatch.setattr(torch, "empty", lambda *a, **k: made.append(k) or real_empty(*a))
    assert resolve_device("cuda") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert made == []  # nothing was put on a GPU to find out
    with pytest.raises(ValueError, match="this machine has 2 CUDA device"):
        resolve_device("cuda:2")
    two = DistContext(rank=1, world_size=2, local_rank=1)
    with pytest.raises(ValueError, match="under torchrun puts every rank on one GPU"):
        local_device(torch.device("cuda", 0), two)
    assert local_device(torch.device("cuda", 0), DistContext()) == torch.device("cuda", 0)
