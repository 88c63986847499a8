"""Pseudo-semantic probability from sign statistics of positive interactions (METHOD.md §4).

A semantic column makes a matched patch and word agree in sign; a style column agrees only by
chance. These pure functions turn token batches into that statistic. They serve both the
global reading (pooled over a batch's matched pairs) and the pair-adaptive reading
(per candidate pair, in :mod:`picoalign.core.adaptive`).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

Estimator = Literal["sign", "magnitude"]
Positives = Literal["aligned", "all"]


def _aligned_products(v: Tensor, vm: Tensor, t: Tensor, tm: Tensor) -> tuple[Tensor, Tensor]:
    """Interactions e = v_i ⊙ t_j of each pair's aligned token pairs.

    For pair b: every real word with its best patch, every real patch with its best word.
    Returns e (P, n_t + n_v, D) and its validity mask (P, n_t + n_v).
    """
    sims = torch.bmm(v, t.transpose(1, 2))  # (P, n_v, n_t)
    sims = sims.masked_fill(~(vm.unsqueeze(2) & tm.unsqueeze(1)), float("-inf"))
    best_patch = sims.argmax(1)  # (P, n_t): for each word
    best_word = sims.argmax(2)  # (P, n_v): for each patch
    d = v.shape[-1]
    v_for_words = torch.gather(v, 1, best_patch.unsqueeze(-1).expand(-1, -1, d))
    t_for_patches = torch.gather(t, 1, best_word.unsqueeze(-1).expand(-1, -1, d))
    e = torch.cat((v_for_words * t, v * t_for_patches), dim=1)
    return e, torch.cat((tm, vm), dim=1)


def aligned_sign_counts(
    sign_v: Tensor,
    patch_real: Tensor,
    sign_t: Tensor,
    word_real: Tensor,
    best_patch: Tensor,
    best_word: Tensor,
    *,
    exact: bool = True,
) -> tuple[Tensor, Tensor]:
    """Sign counts of aligned token pairs without building their (pairs × tokens × D)
    products: the one implementation behind the batch estimator and reading B's candidates.

    Layout: G images, each with C captions. ``sign_v`` (G, n_v, D), ``patch_real`` (G, C, n_v);
    ``sign_t`` (G, n_t, C, D), ``word_real`` (G, n_t, C); ``best_patch`` (G, n_t, C) is each
    word's best patch, ``best_word`` (G, n_v, C) each patch's best word. With M_ij the number
    of times (patch i, word j) is aligned (0, 1 or 2), the count of positive products in
    column d is Σ M_ij [s_id s_jd > 0] = ½ Σ_j (s_jd (M s_v)_jd + |s_jd| (M |s_v|)_jd): one
    GEMM per image. Counts are small integers, so this equals the direct count exactly,
    zeros included. ``exact=False`` takes |s| = 1 (no real token has an exact 0.0 component,
    as a linear head's normalised output does not), which halves the GEMM.
    Returns num (G, C, D) and den (G, C).
    """
    g, n_t, c, _ = sign_t.shape
    n_v, d = sign_v.shape[1:]
    dt = sign_v.dtype
    m = torch.zeros(g, n_t, c, n_v, dtype=dt, device=sign_v.device)
    m.scatter_(3, best_patch.unsqueeze(-1), word_real.unsqueeze(-1).to(dt))  # word → patch
    m.scatter_add_(1, best_word.transpose(1, 2).unsqueeze(1), patch_real.unsqueeze(1).to(dt))
    rhs = torch.cat((sign_v, sign_v.abs()), dim=-1) if exact else sign_v
    agree = torch.bmm(m.view(g, n_t * c, n_v), rhs).view(g, n_t, c, -1)
    den = m.sum((1, 3))  # (G, C): aligned pairs of each pair
    num = (sign_t * agree[..., :d]).sum(1)
    if exact:
        return 0.5 * (num + (sign_t.abs() * agree[..., d:]).sum(1)), den
    return 0.5 * (den.unsqueeze(-1) + num), den


def _aligned_sign_counts(v: Tensor, vm: Tensor, t: Tensor, tm: Tensor) -> tuple[Tensor, Tensor]:
    """Per-pair sign counts of the aligned token pairs (pair b: img[b] with txt[b])."""
    d = v.shape[-1]
    sims = torch.bmm(v, t.transpose(1, 2))  # (P, n_v, n_t)
    sims = sims.masked_fill(~(vm.unsqueeze(2) & tm.unsqueeze(1)), float("-inf"))
    num, den = aligned_sign_counts(
        torch.sign(v),
        vm.unsqueeze(1),
        torch.sign(t).unsqueeze(2),
        tm.unsqueeze(2),
        sims.argmax(1).unsqueeze(2),
        sims.argmax(2).unsqueeze(2),
    )
    return num.squeeze(1), den.expand(-1, d)


def interaction_counts(
    img: Tensor,
    img_mask: Tensor,
    txt: Tensor,
    txt_mask: Tensor,
    *,
    estimator: Estimator = "sign",
    positives: Positives = "aligned",
) -> tuple[Tensor, Tensor]:
    """Per-pair numerator and denominator of q (METHOD.md §4), both (P, D).

    Pair b is (img[b], txt[b]). Counts rather than ratios so that pairs, batches and ranks
    can be pooled by summing. ``positives="all"`` uses every patch–word pair in closed form
    (sign agreement = n⁺_v n⁺_t + n⁻_v n⁻_t), so it never materialises n_v × n_t × D.
    """
    if estimator not in ("sign", "magnitude"):
        raise ValueError(f"estimator must be 'sign' or 'magnitude', got {estimator!r}")
    if positives == "aligned" and estimator == "sign":
        return _aligned_sign_counts(img, img_mask, txt, txt_mask)
    if positives == "aligned":
        e, m = _aligned_products(img, img_mask, txt, txt_mask)
        mf = m.to(e.dtype).unsqueeze(-1)  # the magnitude estimator (sign returned above)
        return (e.clamp_min(0) * mf).sum(1), (e.abs() * mf).sum(1)
    if positives == "all":
        vm = img_mask.to(img.dtype).unsqueeze(-1)
        tm = txt_mask.to(txt.dtype).unsqueeze(-1)
        if estimator == "sign":
            vp, vn = ((img > 0) * vm).sum(1), ((img < 0) * vm).sum(1)
            tp, tn = ((txt > 0) * tm).sum(1), ((txt < 0) * tm).sum(1)
            return vp * tp + vn * tn, (vm.sum(1) * tm.sum(1)).expand_as(vp)
        vp, vn = (img.clamp_min(0) * vm).sum(1), ((-img).clamp_min(0) * vm).sum(1)
        tp, tn = (txt.clamp_min(0) * tm).sum(1), ((-txt).clamp_min(0) * tm).sum(1)
        return vp * tp + vn * tn, (vp + vn) * (tp + tn)
    raise ValueError(f"positives must be 'aligned' or 'all', got {positives!r}")


def probability_from_q(q: Tensor, transform: str = "2q-1") -> Tensor:
    """p̃ = clip(2q − 1, 0, 1) (a coin flip maps to 0), or q itself with ``"raw"``."""
    if transform == "2q-1":
        return (2 * q - 1).clamp(0, 1)
    if transform == "raw":
        return q.clamp(0, 1)
    raise ValueError(f"transform must be '2q-1' or 'raw', got {transform!r}")


def semantic_probability(
    img: Tensor,
    img_mask: Tensor,
    txt: Tensor,
    txt_mask: Tensor,
    *,
    estimator: Estimator = "sign",
    positives: Positives = "aligned",
    transform: str = "2q-1",
) -> Tensor:
    """The batch's pseudo-semantic probability p̃ (D,) from its matched pairs."""
    num, den = interaction_counts(
        img, img_mask, txt, txt_mask, estimator=estimator, positives=positives
    )
    q = num.sum(0) / den.sum(0).clamp_min(1e-12)
    return probability_from_q(q, transform)
