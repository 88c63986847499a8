"""The max-mean of one block of token pairs, with a backward that keeps indices, not scores.

    S(V, T) = Σ_i a_i max_j s_ij + Σ_j b_j max_i s_ij ,   s_ij = v_i · t_j

(a, b: the 1/#real weights of patches and words, 0 on padding). Autograd through ``amax``
keeps the whole (patches × words × pairs) score block for backward and rebuilds it there as
an equality mask, a tie count, a division and two products: measured on a B = 128 training
batch, that backward cost more than the forward GEMM (``benchmarks/train_speed.py``). The
max-mean's gradient only needs *which* word is each patch's best and which patch is each
word's best, so :class:`MaxMean` saves those indices (for 49 patches × 12 words, a fifth of
the bytes of the fp32 scores), writes the block's sparse gradient into one zero-filled tensor
with two scatters, and multiplies it back through the two GEMM operands.

Ties: ``max`` gives the whole gradient to the first maximal token, ``amax`` splits it
evenly. Both are subgradients; with padding filled by a duplicate of the first real token
(:func:`picoalign.core.similarity.fill_padding`) the first maximal token is the real one,
so the gradient reaching each real token is the same.

The indices are also what reading B needs (each candidate pair's aligned token pairs,
:mod:`picoalign.core.adaptive`): the training step reuses them instead of recomputing the
candidates' scores.

Layout, shared by both uses — G images, M captions per image, word-major:

- ``shared`` (the plain block): ``txt`` is (n_t·M, D), the same M captions for every image;
  ``txt_w`` is (n_t, M).
- per image (reading B's grouped pairs): ``txt`` is (G, n_t·M, D), image g's own M
  captions; ``txt_w`` is (G, n_t, M).

Row j·M + c of the caption rows is word j of caption c, so the score block is
(G, n_v, n_t, M) with the caption index innermost.

Sparse backward (opt-in, :func:`sparse_backward`): a hardest-negative triplet loss gives a
gradient to about 3 of every B scores (the positive, its row's and its column's hardest
negative), yet the dense backward zero-fills the whole block and runs two GEMMs the size of
the forward's. Only the pairs with a non-zero gradient matter, and each pair's gradient
reaches just its own aligned tokens, so gathering those token rows and adding them into
place (``index_add_``) gives the same gradient with a fraction of the work: whole training
steps take 0.72–0.75× the time (``benchmarks/train_speed.py`` prints both side by side;
docs/performance.md). It is used only where at most one score in
:data:`SPARSE_DENSITY` has a gradient (the gathers lose to the GEMMs above about one in ten;
a warm-up epoch's all-negatives loss stays dense). The sums run in another order than the
GEMMs', so results agree to rounding, not in bits: off by default. On CUDA ``index_add_``
accumulates with atomics, so a sparse backward is not bit-reproducible there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

import torch
from torch import Tensor

SPARSE_DENSITY = 16
"""The sparse backward runs where #non-zero gradients · SPARSE_DENSITY ≤ #scores."""

_SPARSE: ContextVar[bool] = ContextVar("picoalign_sparse_backward", default=False)


@contextlib.contextmanager
def sparse_backward(enabled: bool = True) -> Iterator[None]:
    """Max-means computed inside this block may take the sparse backward (module docstring).

    The choice is taken at forward time and kept with the graph, so ``loss.backward()`` may
    run outside the block (and on autograd's device threads)."""
    token = _SPARSE.set(enabled)
    try:
        yield
    finally:
        _SPARSE.reset(token)


def _sims(img: Tensor, txt: Tensor, n_t: int) -> Tensor:
    g, n_v, d = img.shape
    if txt.dim() == 2:  # shared captions: one GEMM
        return (img.reshape(g * n_v, d) @ txt.T).view(g, n_v, n_t, -1)
    return torch.bmm(img, txt.transpose(1, 2)).view(g, n_v, n_t, -1)


class MaxMean(torch.autograd.Function):
    """(img, img_w, txt, txt_w) → scores (G, M) in the weights' dtype, best word
    (G, n_v, M), best patch (G, n_t, M). Only the scores are differentiable, in ``img`` and
    ``txt``."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, img: Tensor, img_w: Tensor, txt: Tensor, txt_w: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        n_t = txt_w.shape[-2]
        sims = _sims(img, txt, n_t)
        best_word, word = sims.max(dim=2)  # (G, n_v, M): each patch's best word
        best_patch, patch = sims.max(dim=1)  # (G, n_t, M): each word's best patch
        i2t = torch.bmm(img_w.unsqueeze(1), best_word.to(img_w.dtype)).squeeze(1)
        t2i = (best_patch.to(txt_w.dtype) * txt_w).sum(dim=-2)
        ctx.save_for_backward(img, img_w, txt, txt_w, word, patch)
        ctx.mark_non_differentiable(word, patch)
        ctx.sparse = _SPARSE.get()
        return i2t + t2i, word, patch

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, grad: Tensor, _word: Tensor, _patch: Tensor
    ) -> tuple[Tensor | None, None, Tensor | None, None]:
        img, img_w, txt, txt_w, word, patch = ctx.saved_tensors
        if ctx.sparse:
            nz = grad.nonzero(as_tuple=True)
            if nz[0].numel() * SPARSE_DENSITY <= grad.numel():
                grad_img, grad_txt = _sparse_grads(grad, nz, img, img_w, txt, txt_w, word, patch)
                return (
                    grad_img if ctx.needs_input_grad[0] else None,
                    None,
                    grad_txt if ctx.needs_input_grad[2] else None,
                    None,
                )
        g, n_v, d = img.shape
        n_t, m = txt_w.shape[-2:]
        dt = img.dtype
        block = torch.zeros(g, n_v, n_t, m, dtype=dt, device=img.device)
        per_patch = (grad.unsqueeze(1) * img_w.unsqueeze(2)).to(dt)  # (G, n_v, M)
        block.scatter_(2, word.unsqueeze(2), per_patch.unsqueeze(2))
        per_word = (grad.unsqueeze(1) * txt_w).to(dt)  # (G, n_t, M)
        block.scatter_add_(1, patch.unsqueeze(1), per_word.unsqueeze(1))
        grad_img = grad_txt = None
        if txt.dim() == 2:
            flat = block.view(g * n_v, n_t * m)
            if ctx.needs_input_grad[0]:
                grad_img = (flat @ txt).view(g, n_v, d)
            if ctx.needs_input_grad[2]:
                grad_txt = flat.T @ img.reshape(g * n_v, d)
        else:
            flat = block.view(g, n_v, n_t * m)
            if ctx.needs_input_grad[0]:
                grad_img = torch.bmm(flat, txt)
            if ctx.needs_input_grad[2]:
                grad_txt = torch.bmm(flat.transpose(1, 2), img)
        return grad_img, None, grad_txt, None


def _sparse_grads(
    grad: Tensor,
    nz: tuple[Tensor, Tensor],
    img: Tensor,
    img_w: Tensor,
    txt: Tensor,
    txt_w: Tensor,
    word: Tensor,
    patch: Tensor,
) -> tuple[Tensor, Tensor]:
    """The max-mean's gradient from the K pairs (a, c) = ``nz`` whose score has one.

    Pair (a, c) reaches two sets of token pairs: each patch p of image a with its best word
    ``word[a, p, c]`` (weight img_w[a, p]), and each word j of caption c with its best
    patch ``patch[a, j, c]`` (weight txt_w[j, c]). Each token pair (u, w) with weight g·ω
    adds g·ω·w to u's gradient and g·ω·u to w's; stacked, that is one gather and one
    ``index_add_`` per side.
    """
    g, n_v, d = img.shape
    n_t, m = txt_w.shape[-2:]
    a, c = nz
    gv = grad[a, c].unsqueeze(1)  # (K, 1)
    dev = img.device
    shared = txt.dim() == 2
    # caption rows in the flattened (rows, D) caption operand: word j of caption c of image a
    base = c if shared else a * (n_t * m) + c
    patches = torch.arange(n_v, device=dev)
    words = torch.arange(n_t, device=dev)
    w_of_c = txt_w[:, c].T if shared else txt_w[a, :, c]  # (K, n_t)
    img_rows = torch.cat([a[:, None] * n_v + patches, a[:, None] * n_v + patch[a, :, c]], 1)
    txt_rows = torch.cat([word[a, :, c] * m + base[:, None], words * m + base[:, None]], 1)
    coef = gv * torch.cat([img_w[a], w_of_c], 1)  # (K, n_v + n_t)
    img_rows, txt_rows = img_rows.reshape(-1), txt_rows.reshape(-1)
    coef = coef.reshape(-1, 1)
    flat_img, flat_txt = img.reshape(g * n_v, d), txt.reshape(-1, d)
    acc = torch.float32 if img.dtype in (torch.bfloat16, torch.float16) else img.dtype
    grad_img = torch.zeros(g * n_v, d, dtype=acc, device=dev)
    grad_img.index_add_(0, img_rows, coef * flat_txt.index_select(0, txt_rows).to(acc))
    grad_txt = torch.zeros(flat_txt.shape[0], d, dtype=acc, device=dev)
    grad_txt.index_add_(0, txt_rows, coef * flat_img.index_select(0, img_rows).to(acc))
    return grad_img.view(img.shape).to(img.dtype), grad_txt.view(txt.shape).to(txt.dtype)


def maxmean(
    img: Tensor, img_w: Tensor, txt: Tensor, txt_w: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Scores and alignment indices of one block (layout: module docstring).

    Padding must already be filled by duplicates of real tokens, and its weights be 0.
    """
    return MaxMean.apply(img, img_w, txt, txt_w)
