"""Slow, obviously-correct references the method-core tests compare against (not shipped)."""

from __future__ import annotations

import torch
from torch import Tensor


def naive_fine_grained_scores(
    img: Tensor, img_mask: Tensor, txt: Tensor, txt_mask: Tensor, weights: Tensor | None = None
) -> Tensor:
    """Reference implementation, one pair at a time in float64. For tests only: slow."""
    w = torch.ones(img.shape[-1], dtype=torch.float64) if weights is None else weights.double()
    out = torch.empty(img.shape[0], txt.shape[0], dtype=torch.float64)
    for a in range(img.shape[0]):
        v = img[a][img_mask[a]].double()
        for b in range(txt.shape[0]):
            t = txt[b][txt_mask[b]].double()
            s = (v * w) @ t.T
            out[a, b] = s.max(1).values.mean() + s.max(0).values.mean()
    return out
