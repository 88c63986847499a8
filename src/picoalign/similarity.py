"""Fine-grained (max-mean) and global image–text scores: METHOD.md §2–3.

``fine_grained_scores`` is the public, stable entry point used by training, evaluation and
the benchmarks. For every image V and caption T it computes

    s_ij   = Σ_d w_d v_id t_jd
    S(V,T) = mean_i max_j s_ij + mean_j max_i s_ij          (padding masked out)

Why blocked: the research-repo loop (one caption at a time, expanded over all images, bmm)
runs many small matrix products and materialises an n_img × n_v × n_t tensor per caption.
Here a block of images against a block of captions is *one* matrix product
(B_i·n_v) × D × (B_t·n_t) — near the machine's GEMM peak — and the block is sized so the
words × patches intermediate stays small (cache-resident for the default budget). Padding is
handled without masked_fill: two extra columns carry a large negative bias for padded tokens,
so the max reductions need no mask and real scores stay exact (they add 0·x terms only).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

_PAD_BIAS = -1.0e4  # far below any cosine; finite, so masked means never meet inf·0
DEFAULT_BUDGET_MB = 64.0


def check_tokens(
    img: Tensor, img_mask: Tensor, txt: Tensor, txt_mask: Tensor, weights: Tensor | None = None
) -> None:
    """Raise ``ValueError`` naming the offending argument for any malformed input."""
    for name, x in (("img", img), ("txt", txt)):
        if not isinstance(x, Tensor) or x.dim() != 3:
            raise ValueError(f"{name} must be a 3-D tensor (N, tokens, D), got {_shape(x)}")
        if not x.is_floating_point():
            raise ValueError(f"{name} must be floating point, got {x.dtype}")
    if img.shape[-1] != txt.shape[-1]:
        raise ValueError(
            f"img and txt must share the feature dimension D: img has D={img.shape[-1]}, "
            f"txt has D={txt.shape[-1]}"
        )
    for name, m, x in (("img_mask", img_mask, img), ("txt_mask", txt_mask, txt)):
        if not isinstance(m, Tensor) or m.shape != x.shape[:2]:
            raise ValueError(
                f"{name} must have shape {tuple(x.shape[:2])} (N, tokens), got {_shape(m)}"
            )
        if m.dtype != torch.bool:
            raise ValueError(f"{name} must be a bool tensor (True = real token), got {m.dtype}")
        if m.numel() and not bool(m.any(dim=1).all()):
            row = int((~m.any(dim=1)).nonzero()[0])
            kind = "caption" if name == "txt_mask" else "image"
            raise ValueError(f"{name}: {kind} {row} has no real token (all positions masked)")
    for name, x in (("img", img), ("txt", txt)):
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"{name} contains NaN or Inf values")
    if weights is not None:
        per_pair = (img.shape[0], img.shape[-1])
        if not isinstance(weights, Tensor) or weights.shape not in ((img.shape[-1],), per_pair):
            raise ValueError(
                f"weights must have shape ({img.shape[-1]},) (or {per_pair} per pair in "
                f"pair_scores), got {_shape(weights)}"
            )
        if not bool(torch.isfinite(weights).all()):
            raise ValueError("weights contains NaN or Inf values")


def _shape(x: object) -> str:
    return str(tuple(x.shape)) if isinstance(x, Tensor) else type(x).__name__


def l2_normalize(x: Tensor, eps: float = 1e-12) -> Tensor:
    """Unit-normalise the last dimension (padding rows of zeros stay zero)."""
    return x / x.norm(dim=-1, keepdim=True).clamp_min(eps)


def _with_bias(x: Tensor, mask: Tensor, first: bool, dtype: torch.dtype) -> Tensor:
    """Append the two bias columns: [x, 1, b] for images, [x, b, 1] for captions.

    Their product adds b_image + b_caption to s_ij: 0 for real tokens, -1e4 for padding.
    """
    bias = (~mask).to(x.dtype).unsqueeze(-1) * _PAD_BIAS
    one = torch.ones_like(bias)
    cols = (one, bias) if first else (bias, one)
    return torch.cat((x, *cols), dim=-1).to(dtype)


def _block_sizes(
    n_img: int, n_v: int, n_txt: int, n_t: int, budget_mb: float, itemsize: int
) -> tuple[int, int]:
    """Pick (images, captions) per block so the n_v × n_t intermediate fits the budget.

    The intermediate is (B_i·n_v) × (B_t·n_t) in the compute dtype plus the fp32 reductions
    (about one extra copy), so the bytes per (image, caption) pair are ≈ n_v·n_t·(itemsize+4).
    """
    per_pair = n_v * n_t * (itemsize + 4)
    pairs = max(1, int(budget_mb * 2**20 / per_pair))
    b_txt = min(n_txt, max(1, int(math.sqrt(pairs * 2))))  # captions are shorter: take more
    b_img = min(n_img, max(1, pairs // b_txt))
    return b_img, b_txt


def _maxmean_block(
    img_b: Tensor, img_m: Tensor, txt_b: Tensor, txt_m: Tensor, n_v: int, n_t: int
) -> Tensor:
    """Scores of one block. img_b: (b_i·n_v, D+2), txt_b: (b_t·n_t, D+2) → (b_i, b_t) fp32."""
    b_i, b_t = img_m.shape[0], txt_m.shape[0]
    sims = (img_b @ txt_b.T).view(b_i, n_v, b_t, n_t)
    # image side: each patch's best word, averaged over real patches
    best_word = sims.amax(dim=3).float()  # (b_i, n_v, b_t)
    i2t = (best_word * img_m.unsqueeze(-1)).sum(1) / img_m.sum(1, keepdim=True)
    # caption side: each word's best patch, averaged over real words
    best_patch = sims.amax(dim=1).float()  # (b_i, b_t, n_t)
    t2i = (best_patch * txt_m.unsqueeze(0)).sum(2) / txt_m.sum(1).unsqueeze(0)
    return i2t + t2i


def fine_grained_scores(
    img: Tensor,
    img_mask: Tensor,
    txt: Tensor,
    txt_mask: Tensor,
    weights: Tensor | None = None,
    *,
    normalize: bool = False,
    compute_dtype: torch.dtype = torch.float32,
    memory_budget_mb: float = DEFAULT_BUDGET_MB,
    validate: bool = True,
) -> Tensor:
    """Max-mean fine-grained score of every image against every caption.

    Args:
        img: (N_img, n_v, D) image tokens. txt: (N_txt, n_t, D) caption tokens.
        img_mask, txt_mask: bool, True = real token; every row needs at least one.
        weights: (D,) column weights w, applied as s_ij = Σ_d w_d v_id t_jd; None = all ones.
            Renormalising p (e.g. to mean 1) is the PICO module's business, not this one's.
        normalize: L2-normalise tokens here (else the caller has done it).
        compute_dtype: dtype of the matrix products (torch.bfloat16 uses AMX on this CPU);
            reductions and the returned scores are fp32.
        memory_budget_mb: bound on the per-block intermediate (words × patches scores).
    Returns: (N_img, N_txt) fp32 scores. Differentiable when inputs require grad.
    """
    if validate:
        check_tokens(img, img_mask, txt, txt_mask, weights)
        if weights is not None and weights.dim() != 1:
            raise ValueError(f"weights must have shape ({img.shape[-1]},), got {_shape(weights)}")
    if normalize:
        img, txt = l2_normalize(img), l2_normalize(txt)
    if weights is not None:
        img = img * weights.to(img.dtype)
    n_img, n_v, _ = img.shape
    n_txt, n_t, _ = txt.shape
    itemsize = torch.empty((), dtype=compute_dtype).element_size()
    b_img, b_txt = _block_sizes(n_img, n_v, n_txt, n_t, memory_budget_mb, itemsize)

    imgs = _with_bias(img, img_mask, True, compute_dtype).reshape(n_img * n_v, -1)
    txts = _with_bias(txt, txt_mask, False, compute_dtype).reshape(n_txt * n_t, -1)
    img_mask_f, txt_mask_f = img_mask.float(), txt_mask.float()

    track_grad = torch.is_grad_enabled() and (img.requires_grad or txt.requires_grad)
    rows: list[Tensor] = []
    out = None if track_grad else torch.empty(n_img, n_txt, dtype=torch.float32)
    for i0 in range(0, n_img, b_img):
        i1 = min(n_img, i0 + b_img)
        img_b, img_m = imgs[i0 * n_v : i1 * n_v], img_mask_f[i0:i1]
        cols: list[Tensor] = []
        for j0 in range(0, n_txt, b_txt):
            j1 = min(n_txt, j0 + b_txt)
            block = _maxmean_block(
                img_b, img_m, txts[j0 * n_t : j1 * n_t], txt_mask_f[j0:j1], n_v, n_t
            )
            if out is None:
                cols.append(block)
            else:
                out[i0:i1, j0:j1] = block
        if out is None:
            rows.append(torch.cat(cols, dim=1))
    return out if out is not None else torch.cat(rows, dim=0)


def pair_scores(
    img: Tensor,
    img_mask: Tensor,
    txt: Tensor,
    txt_mask: Tensor,
    weights: Tensor | None = None,
    *,
    normalize: bool = False,
    validate: bool = True,
) -> Tensor:
    """Max-mean score of matched pairs only: B images against their B captions → (B,).

    ``weights`` may be (D,) or (B, D): per-pair weights serve the pair-adaptive reading.
    """
    if validate:
        check_tokens(img, img_mask, txt, txt_mask, weights)
        if img.shape[0] != txt.shape[0]:
            raise ValueError(
                f"pair_scores needs as many captions as images: img has {img.shape[0]}, "
                f"txt has {txt.shape[0]}"
            )
    if normalize:
        img, txt = l2_normalize(img), l2_normalize(txt)
    if weights is not None:  # (D,) for all pairs, or (B, D): one column weighting per pair
        img = img * (weights if weights.dim() == 1 else weights.unsqueeze(1)).to(img.dtype)
    sims = torch.bmm(img, txt.transpose(1, 2))  # (B, n_v, n_t)
    fill = torch.finfo(sims.dtype).min
    both = img_mask.unsqueeze(2) & txt_mask.unsqueeze(1)
    sims = sims.masked_fill(~both, fill)
    im, tm = img_mask.to(sims.dtype), txt_mask.to(sims.dtype)
    i2t = (sims.amax(2).clamp_min(-1e4) * im).sum(1) / im.sum(1)
    t2i = (sims.amax(1).clamp_min(-1e4) * tm).sum(1) / tm.sum(1)
    return i2t + t2i


def pool_tokens(tokens: Tensor, mask: Tensor) -> Tensor:
    """Masked mean of tokens, L2-normalised: the global embedding of each sample."""
    m = mask.to(tokens.dtype).unsqueeze(-1)
    return l2_normalize((tokens * m).sum(1) / m.sum(1).clamp_min(1.0))


def global_scores(
    img: Tensor, img_mask: Tensor, txt: Tensor, txt_mask: Tensor, *, validate: bool = True
) -> Tensor:
    """The global baseline: cosine of mean-pooled tokens, (N_img, N_txt)."""
    if validate:
        check_tokens(img, img_mask, txt, txt_mask)
    return pool_tokens(img, img_mask) @ pool_tokens(txt, txt_mask).T


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
