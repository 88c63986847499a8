"""Keep freed memory in the process, so large CPU temporaries stop costing page faults.

glibc's ``malloc`` serves every allocation above its mmap threshold (128 KiB, raised
adaptively to at most 32 MiB) with fresh pages from the kernel, and unmaps them again on
``free``. A CPU training step allocates dozens of 10–70 MB temporaries (score blocks, the
grouped captions of reading B, their gradients) and frees them again, so every step pays a
page fault per 4 KiB page on first touch. On the 2-core development VM, zero-filling a
66 MB tensor took 29.6 ms that way and 3.0 ms from memory the process kept. Raising the mmap
and trim thresholds to 1 GiB lets ``malloc`` reuse freed memory instead (what jemalloc or
tcmalloc, which PyTorch's performance guide suggests preloading, do by default).
``benchmarks/train_speed.py`` times training steps both ways in one run.

What it changes: speed and the resident size (the process keeps up to 1 GiB of freed memory
for reuse), never results (the same arithmetic on the same data). Where it applies: Linux
with glibc; elsewhere it does nothing. ``PICOALIGN_KEEP_FREED_MEMORY=0`` turns it off.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import sys
from collections.abc import Callable

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers
KEEP_BYTES = 1 << 30
GLIBC_DEFAULT_BYTES = 128 * 1024
ENV = "PICOALIGN_KEEP_FREED_MEMORY"


def _mallopt() -> Callable[[int, int], int] | None:
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return None
    return getattr(ctypes.CDLL(None), "mallopt", None)


def set_malloc_thresholds(nbytes: int) -> bool:
    """Set glibc's mmap and trim thresholds to ``nbytes``; False where there is no glibc.

    ``GLIBC_DEFAULT_BYTES`` restores glibc's starting values (without its adaptive raise);
    the benchmark uses it to time the default behaviour in the same run.
    """
    mallopt = _mallopt()
    if mallopt is None:
        return False
    ok = bool(mallopt(_M_MMAP_THRESHOLD, nbytes)) and bool(mallopt(_M_TRIM_THRESHOLD, nbytes))
    if not ok:
        log.debug("mallopt refused thresholds of %d bytes", nbytes)
    return ok


def keep_freed_memory() -> bool:
    """Let this process reuse freed memory (module doc). Idempotent; True if it applied."""
    if os.environ.get(ENV, "1").strip() == "0":
        return False
    return set_malloc_thresholds(KEEP_BYTES)
