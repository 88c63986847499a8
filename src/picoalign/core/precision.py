"""Scoring math in the precision it asks for, whatever autocast region it is called from.

Why: the max-mean reductions, PICO's statistics and the losses are computed in fp32 (or the
``compute_dtype`` a caller names) because bf16 there changes rankings (docs/performance.md).
picoalign's own loop calls them outside autocast, but a user who drops PICO into an AMP
training loop calls them inside one, and autocast re-casts every matrix product to bf16
whatever the code asked for: scores then differed from fp32 by 2e-3 to 6e-3, silently.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import Tensor

F = TypeVar("F", bound=Callable[..., Any])


def _autocast_on(device_type: str) -> bool:
    try:
        return bool(torch.is_autocast_enabled(device_type))
    except (TypeError, RuntimeError):  # torch < 2.4 takes no device; or a device without AMP
        return device_type == "cuda" and bool(torch.is_autocast_enabled())


def outside_autocast(fn: F) -> F:
    """Run ``fn`` with autocast off for the device of its first tensor argument (a no-op
    outside an autocast region, so picoalign's own calls pay nothing)."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        first = next((a for a in (*args, *kwargs.values()) if isinstance(a, Tensor)), None)
        if first is None or not _autocast_on(first.device.type):
            return fn(*args, **kwargs)
        with torch.autocast(first.device.type, enabled=False):
            return fn(*args, **kwargs)

    return run  # type: ignore[return-value]
