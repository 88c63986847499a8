"""What every benchmark script shares: the machine header its figures are read against, a
timer, R@K of ranked rows, and writing results as JSON (one way, so every script's output
reads the same)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from picoalign.core.hardware import native_low_precision
from picoalign.fileio import atomic_write, atomic_write_text


def machine() -> dict[str, object]:
    """CPU model and capability, torch version, threads, cores, bf16 GEMM support, load."""
    model = "unknown"
    if Path("/proc/cpuinfo").is_file():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu_model": model or platform.processor(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cores": os.cpu_count(),
        "bf16_gemm": "native"
        if native_low_precision(torch.bfloat16)
        else "none: bf16-rounded operands, fp32 GEMM",
        "load": list(os.getloadavg()),
    }


def timed(fn: Callable[[], object]) -> float:
    """Seconds ``fn()`` took (one call)."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def recall_at_k(rows: Sequence[Sequence[int]], target: Sequence[int], k: int) -> float:
    """% of queries whose target is among the first ``k`` of its ranked ``rows``."""
    hits = sum(int(t) in list(r)[:k] for r, t in zip(rows, target, strict=True))
    return 100.0 * hits / max(1, len(rows))


def write_json(path: str | Path, obj: Any) -> Path:
    """``obj`` as indented JSON at ``path`` (parent folders made; all or nothing)."""
    path = Path(path)
    atomic_write_text(json.dumps(obj, indent=1) + "\n", path)
    return path


def add_out_arguments(ap: argparse.ArgumentParser, default: Path | None, what: str) -> None:
    """``--out`` (``what`` the script writes, ``default`` its committed result) and
    ``--overwrite``: a benchmark's output is a result someone may have committed or be
    reading, so replacing it is asked for, never a side effect of re-running a command."""
    ap.add_argument("--out", type=Path, default=default, help=f"{what} (default: %(default)s)")
    add_overwrite_argument(ap, "--out")


def add_overwrite_argument(ap: argparse.ArgumentParser, outputs: str) -> None:
    """``--overwrite`` for a script whose ``outputs`` (the options naming its files) may
    already hold a result."""
    ap.add_argument(
        "--overwrite",
        action="store_true",
        help=f"replace an existing {outputs} (without it the script refuses before any work)",
    )


def refuse_to_overwrite(paths: Iterable[str | Path], overwrite: bool) -> None:
    """Stop, before any work, if one of ``paths`` exists and ``--overwrite`` was not given."""
    existing = [str(p) for p in map(Path, paths) if p.exists()]
    if existing and not overwrite:
        raise SystemExit(
            f"{', '.join(existing)} exists (a committed or earlier result): name another file, "
            "or pass --overwrite to replace it"
        )


def write_unless_changed(staged: dict[Path, Path], overwrite: bool, what: str) -> list[Path]:
    """Copy each drawn-aside file of ``staged`` (destination → temporary file) to its
    destination, and return those that changed. A destination that exists and would change
    stops it, with nothing written, unless ``overwrite``: ``what`` (the option that redraws)
    may be re-run on a committed report or docs picture drawn by other code or from other
    rows, and must not replace it without a word."""
    changed = [
        d for d, new in staged.items() if not d.is_file() or d.read_bytes() != new.read_bytes()
    ]
    existing = [str(d) for d in changed if d.exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"{what} would change {', '.join(existing)} (drawn by other code or from other "
            "rows): pass --overwrite to replace them"
        )
    for dest in changed:
        atomic_write(dest, lambda tmp, new=staged[dest]: shutil.copyfile(new, tmp))
    return changed
