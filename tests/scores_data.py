"""Synthetic score matrices for the metric and protocol tests."""

from __future__ import annotations

import torch
from torch import Tensor


def synthetic_scores(n_img: int, per: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Noisy scores where caption c (image c // per) is more similar to its own image."""
    gen = torch.Generator().manual_seed(seed)
    cap = torch.arange(n_img).repeat_interleave(per)
    signal = (cap.unsqueeze(0) == torch.arange(n_img).unsqueeze(1)).float()
    return 2.0 * signal + torch.randn(n_img, cap.numel(), generator=gen), cap
