"""Fine-grained (max-mean) and global image–text scores: METHOD.md §2–3.

``fine_grained_scores`` is the public, stable entry point used by training, evaluation and
the benchmarks. For every image V and caption T it computes

    s_ij   = Σ_d w_d v_id t_jd
    S(V,T) = mean_i max_j s_ij + mean_j max_i s_ij          (padding masked out)

How it is made fast (measured on a 2-core AVX2 EPYC; ``benchmarks/similarity_speed.py``):

* **One GEMM per block.** A block of images against a block of captions is one matrix
  product (B_i·n_v) × D × (n_t·B_t) instead of the research-repo loop's many small bmm calls.
  Exact max-mean needs every s_ij, so this GEMM is the floor; the rest must stay small.
* **Word-major caption columns.** Columns are ordered (word j, caption c), so the block is a
  (B_i, n_v, n_t, B_t) tensor whose caption index is innermost and contiguous: the max over
  words and the max over patches are both element-wise maxima of long contiguous slabs
  (vectorised), not reductions over a 16-wide inner dimension.
* **Padding by duplication, not bias or masks.** A padded token is replaced by a copy of a
  real token of the same sample: a duplicate never changes a max, and the means give padded
  positions weight 0. No masked_fill pass over the block, no extra bias columns (K stays
  D, a SIMD-friendly size), and padded inputs get exactly zero gradient.
* **Coarse worker threads without autograd.** With ``torch.get_num_threads()`` = W > 1, W
  Python threads each take whole blocks and run them single-threaded. Many small ops with an
  OpenMP barrier each collapse when other processes load the cores (a descheduled thread
  stalls its partner at every barrier); whole-block workers do not, and need no barrier.
* **Backward from indices.** With autograd, a block runs through
  :class:`picoalign.core.maxmean.MaxMean`, which keeps each patch's best word and each word's
  best patch instead of the block's scores, and builds the gradient from them (B = 128
  training step: 1.2–1.5× faster than autograd through ``amax``; ``benchmarks/train_speed.py``
  before/after in docs/performance.md). The same indices are the :class:`Alignment` that
  reading B's training step reuses.
* **bf16 without native support.** Where the CPU has no bf16/fp16 matrix unit (AVX2-only
  CPUs: torch then emulates the low-precision GEMM ~100× slower than fp32), operands are
  rounded to the low precision and multiplied in fp32: the numerics of a native bf16 GEMM
  with fp32 accumulation, at fp32 speed — no speed-up, but no slow-down or wrong ranking.

Measured (1,000 × 1,000, 49 × 16 tokens, D = 512, 2 threads, machine load 3–4): fp32 67
GFLOP/s, 5.3× the loop and 94% of a square fp32 GEMM timed in the same run; with one thread
each, 2.1× the loop. Emulated bf16: 54 GFLOP/s, same rSum, top-1 agreement with fp32 99.6%+.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
from torch import Tensor

from picoalign.core._threads import openmp_backend, run_tiles
from picoalign.core.hardware import gemm_dtype
from picoalign.core.maxmean import maxmean
from picoalign.core.precision import outside_autocast

DEFAULT_BUDGET_MB = 64.0
"""Scores in flight. Without autograd it is split between the worker threads, and the block
size barely matters (2–32 MB per worker measured within noise). With autograd, small blocks
cost time (a 128 × 128 training batch: 16 MB blocks ran 2.7× slower than 64 MB), and the
graph keeps only each block's alignment indices (:mod:`picoalign.core.maxmean`)."""


class Alignment(NamedTuple):
    """Which tokens the max-mean aligned, for every (image, caption) pair, as indices of
    *real* tokens: ``best_word`` (N_img, n_v, N_txt) is each patch's best word,
    ``best_patch`` (N_img, n_t, N_txt) each word's best patch. Entries of padded positions
    point at a real token and carry weight 0 in the score."""

    best_word: Tensor
    best_patch: Tensor


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
    for name, x in (("img", img), ("txt", txt)):
        if x.shape[0] and not x.shape[1]:  # its masks would pass: nothing in them to check
            raise ValueError(f"{name} has 0 tokens per item: every item needs a real token")
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
        # the sum is finite iff (almost always) every entry is: one cheap reduction first
        if not bool(torch.isfinite(x.sum())) and not bool(torch.isfinite(x).all()):
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


def _fill_index(mask: Tensor) -> Tensor:
    """(N, T) position of the token each position holds after :func:`fill_padding`: its
    own for a real token, the sample's first real token for padding."""
    first = mask.to(torch.uint8).argmax(dim=1, keepdim=True)  # first True of every row
    return torch.where(mask, torch.arange(mask.shape[1], device=mask.device), first)


def fill_padding(x: Tensor, mask: Tensor) -> Tensor:
    """Replace every padded token by the sample's first real token (see module docstring).

    Why this is exact: max_j over a set with a duplicated member is unchanged, and the means
    weight padded positions by 0. Gather is differentiable, so gradients of duplicates flow
    back to the real token they copy, and padded inputs get none.
    """
    if mask.device.type == "cpu" and bool(mask.all()):  # a shortcut; elsewhere a device sync
        return x
    idx = _fill_index(mask)
    return torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def _block_sizes(
    n_img: int, n_v: int, n_txt: int, n_t: int, budget_mb: float, itemsize: int
) -> tuple[int, int]:
    """Pick (images, captions) per block so the n_v × n_t intermediate fits the budget.

    Bytes per (image, caption) pair are counted as n_v·n_t·(itemsize + 4): the scores plus
    room for the reduction outputs and temporaries (a safe over-estimate). Captions get the
    larger side (they are shorter), rounded to a multiple of 8 once large, so the contiguous
    caption slab of the word-major layout is whole AVX vectors.
    """
    per_pair = n_v * n_t * (itemsize + 4)
    pairs = max(1, int(budget_mb * 2**20 / per_pair))
    b_txt = min(n_txt, max(1, int(math.sqrt(pairs * 2))))
    if 16 <= b_txt < n_txt:
        b_txt -= b_txt % 8
    b_img = min(n_img, max(1, pairs // b_txt))
    return b_img, b_txt


def _side(
    x: Tensor,
    mask: Tensor,
    w: Tensor | None,
    normalize: bool,
    dt: torch.dtype,
    round_to: torch.dtype | None,
) -> Tensor:
    """Prepare one block of tokens: normalise, weight, fill padding, cast (or round)."""
    if normalize:
        x = l2_normalize(x)
    if w is not None:
        x = x * w.to(x.dtype)
    x = fill_padding(x, mask)
    if round_to is not None:
        x = x.to(round_to)
    return x.to(dt)


def _maxmean_block(img_b: Tensor, img_w: Tensor, txt_b: Tensor, txt_w: Tensor) -> Tensor:
    """Scores of one block → (b_i, b_t) fp32.

    img_b: (b_i, n_v, D) padding filled; img_w: (b_i, n_v) patch weights (1/#real or 0).
    txt_b: (n_t·b_t, D) word-major rows (word j of caption c at row j·b_t + c); txt_w:
    (n_t, b_t) word weights. Both maxima reduce over outer dimensions of the block.
    """
    b_i, n_v, _ = img_b.shape
    n_t, b_t = txt_w.shape
    sims = (img_b.reshape(b_i * n_v, -1) @ txt_b.T).view(b_i, n_v, n_t, b_t)
    best_word = sims.amax(dim=2).float()  # (b_i, n_v, b_t): each patch's best word
    i2t = torch.bmm(img_w.unsqueeze(1), best_word).squeeze(1)
    best_patch = sims.amax(dim=1).float()  # (b_i, n_t, b_t): each word's best patch
    t2i = (best_patch * txt_w).sum(dim=1)
    return i2t + t2i


@outside_autocast
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
    return_alignment: bool = False,
) -> Tensor | tuple[Tensor, Alignment]:
    """Max-mean fine-grained score of every image against every caption.

    Args:
        img: (N_img, n_v, D) image tokens. txt: (N_txt, n_t, D) caption tokens.
        img_mask, txt_mask: bool, True = real token; every row needs at least one.
        weights: (D,) column weights w, applied as s_ij = Σ_d w_d v_id t_jd; None = all ones.
            Renormalising p (e.g. to mean 1) is the PICO module's business, not this one's.
        normalize: L2-normalise tokens here (else the caller has done it).
        compute_dtype: operand precision of the matrix products. bf16/fp16 run natively
            where the CPU has a unit for them (AMX, AVX512-BF16) or on GPUs; elsewhere the
            operands are rounded to it and multiplied in fp32 (same numerics, fp32 speed).
            Reductions and the returned scores are fp32.
        memory_budget_mb: bound on the words × patches scores in flight (all worker threads
            together; with autograd, per block).
        return_alignment: also return the :class:`Alignment` (which tokens each pair's
            max-mean aligned): reading B's training step reuses it.
    Returns: (N_img, N_txt) fp32 scores, differentiable when inputs require grad; with
        ``return_alignment``, (scores, alignment).
    """
    if validate:
        check_tokens(img, img_mask, txt, txt_mask, weights)
        if weights is not None and weights.dim() != 1:
            raise ValueError(f"weights must have shape ({img.shape[-1]},), got {_shape(weights)}")
    if not compute_dtype.is_floating_point:  # an integer GEMM rounds every score to 0
        raise ValueError(f"compute_dtype must be a floating-point dtype, got {compute_dtype}")
    if not memory_budget_mb > 0:  # NaN too: it failed deep in the block sizing
        raise ValueError(f"memory_budget_mb must be a number > 0, got {memory_budget_mb!r}")
    n_img, n_v, _ = img.shape
    n_txt, n_t, _ = txt.shape
    if n_img == 0 or n_txt == 0:  # an empty gallery or query list: nothing to score
        if return_alignment:
            raise ValueError("fine_grained_scores: no images or no captions to align")
        return torch.zeros(n_img, n_txt, device=img.device)
    dt, rounded = gemm_dtype(compute_dtype, img.device)
    round_to = compute_dtype if rounded else None
    track_grad = torch.is_grad_enabled() and any(
        x is not None and x.requires_grad for x in (img, txt, weights)
    )
    # the index-saving max-mean where its indices are needed: for backward, or returned
    indexed = track_grad or return_alignment
    # coarse workers only where they help and are safe: CPU, no graph, OpenMP thread settings
    coarse = not track_grad and img.device.type == "cpu" and openmp_backend()
    workers = max(1, torch.get_num_threads()) if coarse else 1
    itemsize = dt.itemsize
    b_img, b_txt = _block_sizes(n_img, n_v, n_txt, n_t, memory_budget_mb / workers, itemsize)
    img_real, txt_real = img_mask.to(torch.float32), txt_mask.to(torch.float32)
    img_w = img_real / img_real.sum(dim=1, keepdim=True)
    txt_w = txt_real / txt_real.sum(dim=1, keepdim=True)
    if return_alignment:
        words = torch.empty(n_img, n_v, n_txt, dtype=torch.long, device=img.device)
        patches = torch.empty(n_img, n_t, n_txt, dtype=torch.long, device=img.device)

    def caption_block(j0: int, j1: int) -> tuple[Tensor, Tensor]:
        t = _side(txt[j0:j1], txt_mask[j0:j1], None, normalize, dt, round_to)
        return t.transpose(0, 1).reshape(n_t * (j1 - j0), -1), txt_w[j0:j1].T

    def block(i0: int, i1: int, j0: int, j1: int, cap: tuple[Tensor, Tensor]) -> Tensor:
        v = _side(img[i0:i1], img_mask[i0:i1], weights, normalize, dt, round_to)
        if not indexed:
            return _maxmean_block(v, img_w[i0:i1], *cap)
        scores, word, patch = maxmean(v, img_w[i0:i1], *cap)
        if return_alignment:
            words[i0:i1, :, j0:j1], patches[i0:i1, :, j0:j1] = word, patch
        return scores

    i_starts, j_starts = range(0, n_img, b_img), range(0, n_txt, b_txt)
    if track_grad:  # one thread, blocks kept in the graph
        rows = []
        j_ends = [min(n_txt, j0 + b_txt) for j0 in j_starts]
        caps = [caption_block(j0, j1) for j0, j1 in zip(j_starts, j_ends, strict=True)]
        for i0 in i_starts:
            i1 = min(n_img, i0 + b_img)
            cells = [
                block(i0, i1, j0, j1, c) for j0, j1, c in zip(j_starts, j_ends, caps, strict=True)
            ]
            rows.append(torch.cat(cells, dim=1))
        out = torch.cat(rows, dim=0)
    else:
        out = torch.empty(n_img, n_txt, dtype=torch.float32, device=img.device)

        def do(tile: tuple[int, int], state: dict[str, Any]) -> None:
            i0, j0 = tile
            i1, j1 = min(n_img, i0 + b_img), min(n_txt, j0 + b_txt)
            if state.get("j0") != j0:  # each worker keeps its current caption block
                state["j0"], state["cap"] = j0, caption_block(j0, j1)
            out[i0:i1, j0:j1] = block(i0, i1, j0, j1, state["cap"])

        run_tiles([(i0, j0) for j0 in j_starts for i0 in i_starts], do, workers)  # caption-major
    if not return_alignment:
        return out
    # indices into the filled blocks → indices of the real tokens they copy
    txt_fill = _fill_index(txt_mask).T.unsqueeze(0).expand(n_img, n_t, n_txt)
    img_fill = _fill_index(img_mask).unsqueeze(2).expand(n_img, n_v, n_txt)
    return out, Alignment(txt_fill.gather(1, words), img_fill.gather(1, patches))


@outside_autocast
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


def pad_cat(
    tokens: list[Tensor], masks: list[Tensor], *, dim: int | None = None, device: Any = None
) -> tuple[Tensor, Tensor]:
    """Concatenate batches of token sets of different widths (N_k, T_k, D): each is padded
    to the widest T with zero tokens and False mask entries. No batches at all give
    (0, 0, ``dim``) tokens, so that encoding an empty list is not an error."""
    if not tokens:
        if dim is None:
            raise ValueError("pad_cat: no batches, and no dim for an empty result")
        empty = torch.zeros(0, 0, dim, device=device)
        return empty, torch.zeros(0, 0, dtype=torch.bool, device=device)
    width = max((t.shape[1] for t in tokens), default=1)
    tokens = [torch.nn.functional.pad(t, (0, 0, 0, width - t.shape[1])) for t in tokens]
    masks = [torch.nn.functional.pad(m, (0, width - m.shape[1])) for m in masks]
    return torch.cat(tokens), torch.cat(masks)


def masked_mean(tokens: Tensor, mask: Tensor) -> Tensor:
    """Mean over the real tokens; rows without any give zeros instead of NaN."""
    m = mask.to(tokens.dtype).unsqueeze(-1)
    return (tokens * m).sum(1) / m.sum(1).clamp_min(1.0)


def pool_tokens(tokens: Tensor, mask: Tensor) -> Tensor:
    """Masked mean of tokens, L2-normalised: the global embedding of each sample."""
    return l2_normalize(masked_mean(tokens, mask))


@outside_autocast
def global_scores(
    img: Tensor, img_mask: Tensor, txt: Tensor, txt_mask: Tensor, *, validate: bool = True
) -> Tensor:
    """The global baseline: cosine of mean-pooled tokens, (N_img, N_txt)."""
    if validate:
        check_tokens(img, img_mask, txt, txt_mask)
    return pool_tokens(img, img_mask) @ pool_tokens(txt, txt_mask).T
