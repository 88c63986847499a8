"""Performance-feedback weighting of style prototypes (METHOD.md §6).

ω_k = softmax(Δ_k / τ) over the in-batch gains Δ_k each prototype brings. Softmax is strictly
increasing in Δ, so (Chebyshev's sum inequality) the ω-weighted mean gain is at least the
uniform mean gain: the property the paper proves and the tests check.
"""

from __future__ import annotations

import torch
from torch import Tensor

from picoalign.core.losses import positive_mask, triplet_loss


def feedback_weights(gains: Tensor, tau: float, normalize: str = "none") -> Tensor:
    """ω_k = softmax(Δ_k / τ): strictly increasing in Δ, uniform as τ → ∞, arg-max as τ → 0.

    ``normalize="zscore"`` standardises Δ first, so τ is in units of the gains' spread —
    useful because raw in-batch gains are tiny (METHOD.md §6, measured caution).
    """
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    # fp64 where the device has it (softmax of tiny gains / small τ); Apple's MPS has none
    g = gains.float() if gains.device.type == "mps" else gains.double()
    if normalize == "zscore" and g.numel() > 1:
        g = (g - g.mean()) / g.std(unbiased=False).clamp_min(1e-12)
    elif normalize not in ("none", "zscore"):
        raise ValueError(f"normalize must be 'none' or 'zscore', got {normalize!r}")
    return torch.softmax(g / tau, dim=0).to(gains.dtype)


def in_batch_ranks(scores: Tensor, image_ids: Tensor) -> tuple[Tensor, Tensor]:
    """0-based ranks of the best positive: per image row (i→t) and per caption column (t→i).

    Ties count against the positive (rank = number of negatives scoring ≥ it).
    """
    pos = positive_mask(image_ids)
    neg_inf = torch.finfo(scores.dtype).min
    best_t = scores.masked_fill(~pos, neg_inf).amax(1, keepdim=True)
    best_i = scores.masked_fill(~pos, neg_inf).amax(0, keepdim=True)
    rank_i2t = ((scores >= best_t) & ~pos).sum(1)
    rank_t2i = ((scores >= best_i) & ~pos).sum(0)
    return rank_i2t, rank_t2i


def retrieval_score(scores: Tensor, image_ids: Tensor, metric: str = "mrr") -> Tensor:
    """In-batch retrieval quality r used by the feedback (higher is better)."""
    if metric == "neg_loss":
        return -triplet_loss(scores, image_ids, margin=0.2, hardest=True) / len(image_ids)
    r_it, r_ti = in_batch_ranks(scores, image_ids)
    if metric == "mrr":
        return 0.5 * ((1.0 / (r_it + 1)).mean() + (1.0 / (r_ti + 1)).mean())
    if metric == "rsum":
        ks = torch.tensor([1, 5, 10], device=scores.device)
        return 100 * sum(((r < ks.unsqueeze(1)).float().mean(1)).sum() for r in (r_it, r_ti))
    raise ValueError(f"metric must be 'rsum', 'mrr' or 'neg_loss', got {metric!r}")
