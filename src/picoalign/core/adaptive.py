"""Reading B of METHOD.md §6b: the pair-adaptive semantic probability p(V, T).

For a candidate pair, the sign statistic of its own aligned token pairs needs no label:

    q_d(V,T) = share of aligned (patch, word) pairs with v_id t_jd > 0
    p(V,T)   = λ · clip(2 q(V,T) − 1, 0, 1) + (1 − λ) · prior

and the pair is re-scored with p(V,T). p(V,T) carries no gradient (it is a statistic, like
the global p); the re-score does. Two uses:

- **scoring** (``pair_adaptive_scores``): every image against every caption, blocked and
  memory-bounded like ``fine_grained_scores``; ≈ 3× its work plus gathers.
- **training rule** (``pair_adaptive_training_scores``): B-scores for the positives and each
  row's and column's hardest in-batch negatives, substituted into the plain score matrix —
  the recipe METHOD.md §6b measured to help when the model is then *scored plain*.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from picoalign.core.estimators import (
    aligned_sign_counts,
    interaction_counts,
    probability_from_q,
)
from picoalign.core.losses import positive_mask
from picoalign.core.maxmean import maxmean
from picoalign.core.pico_config import PICOConfig
from picoalign.core.similarity import (
    DEFAULT_BUDGET_MB,
    Alignment,
    fill_padding,
    fine_grained_scores,
    pair_scores,
)

DEFAULT_LAM = PICOConfig.lam  # the model's default λ (the functions said 0.5, the model 0.25)


def _mix(p_hat: Tensor, prior: Tensor, lam: float) -> Tensor:
    """λ · p̂ + (1 − λ) · prior: the global prototype as the prior of a noisy per-pair p̂."""
    return lam * p_hat + (1 - lam) * prior.to(p_hat.dtype)


def _pair_probability(
    v: Tensor, vm: Tensor, t: Tensor, tm: Tensor, prior: Tensor, lam: float
) -> Tensor:
    """p(V,T) for P pairs given pairwise (P, n, D) tokens → (P, D), no gradient."""
    with torch.no_grad():
        num, den = interaction_counts(v.detach(), vm, t.detach(), tm)
        return _mix(probability_from_q(num / den.clamp_min(1e-12)), prior, lam)


def pair_adaptive_pair_scores(
    img: Tensor,
    img_mask: Tensor,
    txt: Tensor,
    txt_mask: Tensor,
    *,
    prior: Tensor,
    lam: float = DEFAULT_LAM,
) -> Tensor:
    """B-scores of P given pairs (img[k], txt[k]) → (P,). Differentiable in the tokens."""
    p = _pair_probability(img, img_mask, txt, txt_mask, prior, lam)
    return pair_scores(img, img_mask, txt, txt_mask, p, validate=False)


def pair_adaptive_scores(
    img: Tensor,
    img_mask: Tensor,
    txt: Tensor,
    txt_mask: Tensor,
    *,
    prior: Tensor,
    lam: float = DEFAULT_LAM,
    scale: float | Tensor = 1.0,
    memory_budget_mb: float = DEFAULT_BUDGET_MB,
) -> Tensor:
    """Every image against every caption with its own p(V,T): (N_img, N_txt), fp32.

    Blocks of b_i images × b_t captions are expanded into b_i·b_t explicit pairs; the block
    is sized so the expanded tokens and the per-pair n_v × n_t products fit the budget.
    ``scale`` multiplies the result (the matched-pair rescaling learnt in training; a 0-d
    tensor is taken as it is, so reading it costs no device sync).
    """
    n_img, n_v, d = img.shape
    n_txt, n_t, _ = txt.shape
    if n_img == 0 or n_txt == 0:  # nothing to score, as the plain rule says
        return torch.zeros(n_img, n_txt, dtype=torch.float32, device=img.device)
    per_pair = 4 * ((n_v + n_t) * d * 4 + n_v * n_t * 3)  # tokens, products, gathers
    pairs = max(1, int(memory_budget_mb * 2**20 / per_pair))
    b_t = min(n_txt, max(1, int(math.sqrt(pairs))))
    b_i = min(n_img, max(1, pairs // b_t))
    out = torch.empty(n_img, n_txt, dtype=torch.float32, device=img.device)
    with torch.no_grad():
        for i0 in range(0, n_img, b_i):
            i1 = min(n_img, i0 + b_i)
            for j0 in range(0, n_txt, b_t):
                j1 = min(n_txt, j0 + b_t)
                bi, bt = i1 - i0, j1 - j0
                v = img[i0:i1].unsqueeze(1).expand(bi, bt, n_v, d).reshape(-1, n_v, d)
                vm = img_mask[i0:i1].unsqueeze(1).expand(bi, bt, n_v).reshape(-1, n_v)
                t = txt[j0:j1].unsqueeze(0).expand(bi, bt, n_t, d).reshape(-1, n_t, d)
                tm = txt_mask[j0:j1].unsqueeze(0).expand(bi, bt, n_t).reshape(-1, n_t)
                s = pair_adaptive_pair_scores(v.float(), vm, t.float(), tm, prior=prior, lam=lam)
                out[i0:i1, j0:j1] = s.view(bi, bt) * scale
    return out


def pair_adaptive_training_scores(
    plain: Tensor,
    img: Tensor,
    img_mask: Tensor,
    txt: Tensor,
    txt_mask: Tensor,
    image_ids: Tensor,
    *,
    prior: Tensor,
    lam: float = DEFAULT_LAM,
    hard_negatives: int = 10,
    layout: str | None = None,
    alignment: Alignment | None = None,
) -> tuple[Tensor, Tensor]:
    """The in-batch matrix for the loss under reading B's training rule.

    Positives and each row's and column's ``hard_negatives`` hardest negatives (picked by
    the plain score) are replaced by their B-scores, rescaled by one batch constant so the
    matched pairs keep their plain scale (mean over positives; no gradient through it).
    Returns (scores, scale) — the scale is kept by PICO for weighted evaluation. A batch
    whose matched pairs cannot set a scale (their mean plain score is not positive, or the
    ratio is outside :data:`SCALE_RANGE`) keeps its plain scores, and its scale is NaN.

    How it stays cheap (``benchmarks/train_speed.py``): the chosen pairs are grouped by
    image, C slots per image (C = the most pairs any image has), and p(V,T) weights the
    *caption* side. Each image's tokens then enter one GEMM against its C weighted captions,
    and no (pairs × patches × D) copy of the image tokens is ever made, forward or backward.
    p(V,T) needs each pair's aligned tokens: ``alignment`` is the plain matrix's own
    (``fine_grained_scores(..., return_alignment=True)``), so they cost nothing here; without
    it they are recomputed (one no-grad plain scoring). Finding C is a host sync (the
    selection is data-dependent), so off the CPU the default ``layout`` is ``"pairs"``: a
    fixed b·(2k + 1) explicit candidate pairs, sync-free, at more memory traffic. Both give
    the same scores (tests).
    """
    pos = positive_mask(image_ids)
    k = min(hard_negatives, plain.shape[0] - 1)
    if layout is None:
        layout = "grouped" if plain.device.type == "cpu" else "pairs"
    if layout == "grouped":
        if alignment is None:
            with torch.no_grad():
                _, alignment = fine_grained_scores(
                    img.detach(), img_mask, txt.detach(), txt_mask, return_alignment=True
                )
        return _grouped_training_scores(
            plain, img, img_mask, txt, txt_mask, pos, k, prior, lam, alignment
        )
    if layout != "pairs":
        raise ValueError(f"layout must be 'grouped' or 'pairs', got {layout!r}")
    return _pairs_training_scores(plain, img, img_mask, txt, txt_mask, pos, k, prior, lam)


def _grouped_training_scores(
    plain: Tensor,
    img: Tensor,
    img_mask: Tensor,
    txt: Tensor,
    txt_mask: Tensor,
    pos: Tensor,
    k: int,
    prior: Tensor,
    lam: float,
    alignment: Alignment,
) -> tuple[Tensor, Tensor]:
    """The grouped layout (see :func:`pair_adaptive_training_scores`)."""
    b, n_t = txt.shape[:2]
    device = plain.device
    eye = torch.eye(b, dtype=torch.bool, device=device)
    chosen = eye.clone()  # other positives are masked by the loss anyway
    if k > 0:
        masked = plain.detach().masked_fill(pos, float("-inf"))
        chosen.scatter_(1, masked.topk(k, dim=1).indices, True)
        chosen.scatter_(0, masked.topk(k, dim=0).indices, True)
        chosen &= ~pos | eye  # topk may pick -inf when k ≥ #negs
    counts = chosen.sum(1)
    c = int(counts.max())  # the one host sync: the padded width of the grouped layout
    # slot j of image a holds its j-th chosen caption (in column order); -1 = empty slot
    order = torch.where(chosen, torch.arange(b, device=device), b).sort(dim=1).values[:, :c]
    valid = order < b
    cols = order.clamp_max(b - 1)  # empty slots read caption b-1 and are masked out
    # word-major caption rows of every image's slots: row j·C + s is word j of slot s
    rows = cols.unsqueeze(1) * n_t + torch.arange(n_t, device=device).view(1, n_t, 1)
    filled = fill_padding(txt, txt_mask).reshape(b * n_t, -1)
    t_g = filled.index_select(0, rows.reshape(-1)).view(b, n_t, c, -1)  # (B, n_t, C, D)
    real = txt_mask.T[:, cols] & valid.unsqueeze(0)  # (n_t, B, C): real words of real slots
    real = real.permute(1, 0, 2)  # (B, n_t, C)
    with torch.no_grad():
        p = _grouped_probability(img.detach(), img_mask, t_g.detach(), real, cols, alignment)
        p = _mix(p, prior, lam)  # (B, C, D)
    im = img_mask.to(img.dtype)
    word_w = real.to(img.dtype) / real.sum(1, keepdim=True).clamp_min(1)
    s_b, _, _ = maxmean(
        fill_padding(img, img_mask),
        im / im.sum(1, keepdim=True),
        (t_g * p.unsqueeze(1)).view(b, n_t * c, -1),
        word_w,
    )  # (B, C)
    s_b = s_b.masked_fill(~valid, 0.0)
    diag_slot = (cols == torch.arange(b, device=device).unsqueeze(1)) & valid
    diag = (s_b.detach() * diag_slot).sum(1)
    scale, ok = _matched_scale(plain, diag.mean())
    dense = torch.zeros_like(plain).scatter_add(1, cols, s_b * scale)  # empty slots add 0 …
    return torch.where(chosen & ok, dense, plain), _reported(scale, ok)  # … never chosen


def _pairs_training_scores(
    plain: Tensor,
    img: Tensor,
    img_mask: Tensor,
    txt: Tensor,
    txt_mask: Tensor,
    pos: Tensor,
    k: int,
    prior: Tensor,
    lam: float,
) -> tuple[Tensor, Tensor]:
    """The pairs layout: a fixed number b·(2k + 1) of explicit candidate pairs, no sync."""
    b = plain.shape[0]
    ia, tb, keep = _chosen_pairs(plain.detach(), pos, k)
    # index_select, not img[ia]: the backward of advanced indexing with repeated rows adds
    # with float atomics across threads on CPU, so training would not be bit-reproducible
    s_b = pair_adaptive_pair_scores(
        img.index_select(0, ia),
        img_mask.index_select(0, ia),
        txt.index_select(0, tb),
        txt_mask.index_select(0, tb),
        prior=prior,
        lam=lam,
    )
    flat = ia * b + tb

    def dense(values: Tensor) -> Tensor:
        """(b, b) with each kept candidate's value at its entry: duplicates and discarded
        candidates add an exact 0 (and get a zero gradient); index_add on CPU is a
        sequential, deterministic sum."""
        return torch.zeros_like(plain).view(-1).index_add(0, flat, values * keep).view(b, b)

    # the matched pairs' B-scores in row order: the same mean as over s_b[ia == tb]
    s_diag = dense(s_b.detach()).diagonal().contiguous().mean()
    scale, ok = _matched_scale(plain, s_diag)
    ones = torch.ones_like(flat, dtype=torch.int32)
    chosen = torch.zeros_like(plain, dtype=torch.int32).view(-1).index_add(0, flat, ones * keep)
    scores = torch.where((chosen.view(b, b) > 0) & ok, dense(s_b * scale), plain)
    return scores, _reported(scale, ok)


# the matched pairs' plain / B-score ratio a batch may rescale by: about 1 to 4 in training
SCALE_RANGE = (1e-3, 1e3)


def _matched_scale(plain: Tensor, b_diag_mean: Tensor) -> tuple[Tensor, Tensor]:
    """The constant that puts B-scores on the plain scale (mean over the matched pairs), and
    whether the batch can set one. It cannot when the matched pairs' mean plain score is not
    positive (a random or collapsed start: the ratio's sign flips and the loss blew up to
    thousands, the saved ``pair_scale`` went negative and reversed weighted rankings) or when
    the ratio is outside :data:`SCALE_RANGE`; such a batch keeps its plain scores. Where it
    can, the value is the plain ratio, bit for bit. No host sync (``torch.where``)."""
    num = plain.diagonal().detach().mean()
    ratio = num / b_diag_mean.clamp_min(1e-6)
    ok = (num > 0) & (b_diag_mean > 1e-6) & (ratio > SCALE_RANGE[0]) & (ratio < SCALE_RANGE[1])
    return torch.where(ok, ratio, torch.ones_like(ratio)), ok


def _reported(scale: Tensor, ok: Tensor) -> Tensor:
    """The batch's scale for PICO's ``pair_scale`` average: NaN where the batch set none."""
    return torch.where(ok, scale, torch.full_like(scale, float("nan"))).detach()


def _chosen_pairs(plain: Tensor, pos: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """The candidate (row, column) pairs to B-score, in row-major order, with a keep mask.

    The positives (the diagonal) and each row's and column's ``k`` hardest negatives. A fixed
    number b·(2k + 1) of candidates instead of ``nonzero()`` of a chosen-mask: a
    data-dependent shape would force a device sync every step. Duplicates (a pair hardest for
    its row and its column) and picks that are other positives (topk takes −inf entries when
    k ≥ #negatives) get keep = False. Sorting by the flat index gives the kept pairs the order
    ``nonzero()`` had, so the gradients are summed in the same order as before.
    """
    b = plain.shape[0]
    rows = torch.arange(b, device=plain.device)
    ia, tb = [rows], [rows]  # the diagonal: matched pairs (other positives: the loss masks)
    if k > 0:
        masked = plain.masked_fill(pos, float("-inf"))
        by_row = masked.topk(k, dim=1).indices  # (b, k) columns
        by_col = masked.topk(k, dim=0).indices  # (k, b) rows
        ia += [rows.repeat_interleave(k), by_col.reshape(-1)]
        tb += [by_row.reshape(-1), rows.repeat(k)]
    flat = torch.sort(torch.cat(ia) * b + torch.cat(tb), stable=True).values
    first = torch.ones_like(flat, dtype=torch.bool)
    first[1:] = flat[1:] != flat[:-1]
    ia_s, tb_s = flat // b, flat % b
    keep = first & ((ia_s == tb_s) | ~pos.view(-1)[flat])
    return ia_s, tb_s, keep


def _grouped_probability(
    img: Tensor, img_mask: Tensor, t_g: Tensor, real: Tensor, cols: Tensor, align: Alignment
) -> Tensor:
    """p̃(V,T) of every (image, slot) pair → (B, C, D), from the signs of its aligned token
    pairs (each word's best patch, each patch's best word, read off ``align``): the statistic
    of ``interaction_counts(positives="aligned")`` by :func:`aligned_sign_counts`, one GEMM
    per image, taking no real token to have an exact 0.0 component (``exact=False``).

    t_g (B, n_t, C, D): the slots' caption tokens, word-major; real (B, n_t, C): their real
    words; cols (B, C): each slot's caption."""
    n_t, n_v = t_g.shape[1], img.shape[1]
    patch_ok = img_mask.unsqueeze(1) & real.any(1, keepdim=True).transpose(1, 2)  # (B, C, n_v)
    num, den = aligned_sign_counts(
        torch.sign(img),
        patch_ok,
        torch.sign(t_g),
        real,
        align.best_patch.gather(2, cols.unsqueeze(1).expand(-1, n_t, -1)),  # (B, n_t, C)
        align.best_word.gather(2, cols.unsqueeze(1).expand(-1, n_v, -1)),  # (B, n_v, C)
        exact=False,
    )
    return probability_from_q(num / den.clamp_min(1.0).unsqueeze(-1))
