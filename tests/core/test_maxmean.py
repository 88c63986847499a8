"""The index-saving max-mean block (picoalign.core.maxmean) and the alignment that
``fine_grained_scores`` returns with it."""

from __future__ import annotations

import pytest
import torch

import picoalign.core.maxmean as mm
from picoalign.core.maxmean import SPARSE_DENSITY, maxmean, sparse_backward
from picoalign.core.similarity import fill_padding, fine_grained_scores

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def _amax_reference(img, img_w, txt, txt_w):
    """The same block through autograd's ``amax``: the code MaxMean replaces."""
    g, n_v, d = img.shape
    n_t = txt_w.shape[-2]
    if txt.dim() == 2:
        sims = (img.reshape(g * n_v, d) @ txt.T).view(g, n_v, n_t, -1)
    else:
        sims = torch.bmm(img, txt.transpose(1, 2)).view(g, n_v, n_t, -1)
    i2t = (sims.amax(dim=2) * img_w.unsqueeze(2)).sum(1)
    return i2t + (sims.amax(dim=1) * txt_w).sum(-2)


def _block(shared: bool, seed: int = 0, dtype=torch.float64, g: int = 3, m: int = 6):
    gen = torch.Generator().manual_seed(seed)
    n_v, n_t, d = 5, 4, 8
    img = torch.randn(g, n_v, d, generator=gen, dtype=dtype)
    shape = (n_t * m, d) if shared else (g, n_t * m, d)
    txt = torch.randn(*shape, generator=gen, dtype=dtype)
    img_w = torch.rand(g, n_v, generator=gen, dtype=dtype)
    txt_w = torch.rand(*((n_t, m) if shared else (g, n_t, m)), generator=gen, dtype=dtype)
    return img, img_w, txt, txt_w


@pytest.mark.parametrize("shared", [True, False])
def test_scores_and_gradients_equal_amax_autograd(shared):
    img, img_w, txt, txt_w = _block(shared)
    a1, t1 = img.clone().requires_grad_(True), txt.clone().requires_grad_(True)
    a2, t2 = img.clone().requires_grad_(True), txt.clone().requires_grad_(True)
    got, _, _ = maxmean(a1, img_w, t1, txt_w)
    want = _amax_reference(a2, img_w, t2, txt_w)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
    weights = torch.linspace(-1, 2, got.numel(), dtype=got.dtype).view_as(got)
    (got * weights).sum().backward()
    (want * weights).sum().backward()
    torch.testing.assert_close(a1.grad, a2.grad, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(t1.grad, t2.grad, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("shared", [True, False])
def test_gradcheck(shared):
    img, img_w, txt, txt_w = _block(shared, seed=1)

    def scores(a, t):
        return maxmean(a, img_w, t, txt_w)[0]

    assert torch.autograd.gradcheck(scores, (img.requires_grad_(), txt.requires_grad_()))


def _sparse_weights(scores: torch.Tensor, nonzero: int, seed: int = 0) -> torch.Tensor:
    """Loss weights on the scores with exactly ``nonzero`` non-zero entries (as a
    hardest-negative triplet loss gives: a few scores of the block)."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.zeros(scores.numel(), dtype=scores.dtype)
    w[torch.randperm(scores.numel(), generator=gen)[:nonzero]] = torch.linspace(
        -2, 1.5, nonzero, dtype=scores.dtype
    )
    return w.view_as(scores)


@pytest.fixture
def sparse_calls(monkeypatch):
    """How many backward passes took the sparse path."""
    calls = []
    real = mm._sparse_grads
    monkeypatch.setattr(mm, "_sparse_grads", lambda *a: calls.append(1) or real(*a))
    return calls


def _grads(shared: bool, nonzero: int, sparse: bool, dtype=torch.float64, **block):
    img, img_w, txt, txt_w = _block(shared, dtype=dtype, **block)
    a, t = img.requires_grad_(True), txt.requires_grad_(True)
    with sparse_backward(sparse):
        s, _, _ = maxmean(a, img_w, t, txt_w)
    (s * _sparse_weights(s.detach(), nonzero)).sum().backward()  # backward outside the block
    return a.grad, t.grad


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("nonzero", [0, 1])
def test_sparse_backward_equals_dense(shared, nonzero, sparse_calls):
    """At most one score in SPARSE_DENSITY with a gradient: the sparse path, same gradient."""
    assert nonzero * SPARSE_DENSITY <= 3 * 6  # the 3 x 6 block
    dense = _grads(shared, nonzero, False)
    assert not sparse_calls
    sparse = _grads(shared, nonzero, True)
    assert len(sparse_calls) == 1
    for x, y in zip(dense, sparse, strict=True):
        torch.testing.assert_close(x, y, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("shared", [True, False])
def test_sparse_backward_on_a_training_sized_block(shared, sparse_calls):
    """A B = 64 block at hardest-negative density (3 of 64 per row): same gradient in fp32
    to rounding, and exactly the tokens the dense gradient reaches."""
    g = 64
    dense = _grads(shared, 3 * g, False, dtype=torch.float32, g=g, m=g)
    sparse = _grads(shared, 3 * g, True, dtype=torch.float32, g=g, m=g)
    assert len(sparse_calls) == 1
    for x, y in zip(dense, sparse, strict=True):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-4)
        assert torch.equal(x != 0, y != 0)


def test_sparse_backward_keeps_the_dense_path_above_the_density(sparse_calls):
    """Most scores with a gradient (a warm-up epoch's all-negatives loss): the GEMMs, bit for
    bit, even inside ``sparse_backward``."""
    dense = _grads(True, 18, False, dtype=torch.float32)
    inside = _grads(True, 18, True, dtype=torch.float32)
    assert not sparse_calls
    for x, y in zip(dense, inside, strict=True):
        assert torch.equal(x, y)


def test_sparse_backward_is_off_by_default_and_scoped():
    img, img_w, txt, txt_w = _block(True)
    a = img.requires_grad_(True)
    with sparse_backward():
        inner = maxmean(a, img_w, txt, txt_w)[0]
    outer = maxmean(a, img_w, txt, txt_w)[0]
    assert inner.grad_fn._forward_cls.__name__ == "MaxMean"
    assert inner.grad_fn.sparse and not outer.grad_fn.sparse


@pytest.mark.parametrize("shared", [True, False])
def test_indices_are_the_argmax(shared):
    img, img_w, txt, txt_w = _block(shared, seed=2)
    _, word, patch = maxmean(img, img_w, txt, txt_w)
    g, n_v, _ = img.shape
    n_t, m = txt_w.shape[-2:]
    if shared:
        sims = (img.reshape(g * n_v, -1) @ txt.T).view(g, n_v, n_t, m)
    else:
        sims = torch.bmm(img, txt.transpose(1, 2)).view(g, n_v, n_t, m)
    assert torch.equal(word, sims.argmax(dim=2)) and torch.equal(patch, sims.argmax(dim=1))
    assert not word.requires_grad and word.dtype == torch.long


def test_padding_duplicates_get_the_amax_gradient(make_tokens):
    """Padding filled by duplicates makes exact ties: ``max`` gives the gradient to the first
    copy, ``amax`` splits it; through the fill's gather both reach the same real token."""
    img, im, txt, tm = make_tokens(4, 5, 6, 4, 8, seed=5, dtype=torch.float64)
    assert (~tm).any()
    out = []
    for use_maxmean in (True, False):
        a_, t_ = img.clone().requires_grad_(True), txt.clone().requires_grad_(True)
        v, t = fill_padding(a_, im), fill_padding(t_, tm)
        iw = im.double() / im.sum(1, keepdim=True)
        tw = (tm.double() / tm.sum(1, keepdim=True)).T
        rows = t.transpose(0, 1).reshape(-1, t.shape[-1])
        fn = (lambda *x: maxmean(*x)[0]) if use_maxmean else _amax_reference
        s = fn(v, iw, rows, tw)
        (s * torch.linspace(-1, 1, s.numel()).view_as(s).double()).sum().backward()
        out.append((s.detach(), a_.grad, t_.grad))
    for x, y in zip(*out, strict=True):
        torch.testing.assert_close(x, y, atol=1e-10, rtol=1e-10)


def _naive_alignment(img, im, txt, tm):
    n_img, n_v, n_txt, n_t = img.shape[0], img.shape[1], txt.shape[0], txt.shape[1]
    word = torch.zeros(n_img, n_v, n_txt, dtype=torch.long)
    patch = torch.zeros(n_img, n_t, n_txt, dtype=torch.long)
    for a in range(n_img):
        for c in range(n_txt):
            s = img[a].double() @ txt[c].double().T
            s = s.masked_fill(~(im[a].unsqueeze(1) & tm[c].unsqueeze(0)), float("-inf"))
            word[a, :, c], patch[a, :, c] = s.argmax(1), s.argmax(0)
    return word, patch


@pytest.mark.parametrize("budget", [64.0, 1e-9])
@pytest.mark.parametrize("grad", [False, True])
def test_fine_grained_alignment_points_at_the_best_real_tokens(make_tokens, budget, grad):
    img, im, txt, tm = make_tokens(5, 6, 7, 5, 16, seed=6)
    if grad:
        img.requires_grad_(True)
    scores, align = fine_grained_scores(
        img, im, txt, tm, memory_budget_mb=budget, return_alignment=True
    )
    plain = fine_grained_scores(img.detach(), im, txt, tm, memory_budget_mb=budget)
    assert torch.equal(scores.detach(), plain)  # the indexed block scores the same
    word, patch = _naive_alignment(img.detach(), im, txt, tm)
    # real tokens: each patch's best real word, each word's best real patch
    real_v = im.unsqueeze(2).expand_as(word)
    real_t = tm.T.unsqueeze(0).expand_as(patch)
    assert torch.equal(align.best_word[real_v], word[real_v])
    assert torch.equal(align.best_patch[real_t], patch[real_t])
    # every index, padding rows included, names a real token
    assert torch.gather(tm.T.unsqueeze(0).expand(5, -1, -1), 1, align.best_word).all()
    assert torch.gather(im.unsqueeze(2).expand(-1, -1, 7), 1, align.best_patch).all()


def test_alignment_with_worker_threads_equals_one_thread(make_tokens):
    img, im, txt, tm = make_tokens(9, 6, 11, 5, 16, seed=7)
    one = fine_grained_scores(img, im, txt, tm, memory_budget_mb=1e-3, return_alignment=True)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        two = fine_grained_scores(img, im, txt, tm, memory_budget_mb=1e-3, return_alignment=True)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one[0], two[0])
    assert all(torch.equal(x, y) for x, y in zip(one[1], two[1], strict=True))
