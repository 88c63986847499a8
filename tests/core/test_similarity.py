"""Fine-grained (max-mean) and global scores: METHOD.md §2–3, picoalign.core.similarity."""

from __future__ import annotations

import pytest
import torch

from picoalign.core.similarity import (
    _block_sizes,
    fine_grained_scores,
    global_scores,
    l2_normalize,
    pair_scores,
)
from reference_scores import naive_fine_grained_scores

pytestmark = pytest.mark.usefixtures("torch_single_thread")

D = 16
# (n_img, n_v, n_txt, n_t): several blocks that do not divide N, single image / caption.
SHAPES = [(7, 5, 8, 4), (1, 5, 8, 4), (7, 5, 1, 4), (1, 3, 1, 6), (5, 1, 6, 1)]
TINY = 1e-9  # MB: one (image, caption) pair per block
# 6 pairs per block for n_v=5, n_t=4 in fp32 → blocks of 2 images × 3 captions (see below)
UNEVEN = 6 * 5 * 4 * 8 / 2**20


def _expected(img, img_mask, txt, txt_mask, weights=None):
    return naive_fine_grained_scores(img, img_mask, txt, txt_mask, weights).float()


def test_uneven_budget_really_blocks_unevenly():
    # guard for the UNEVEN budget below: 2 × 3 blocks, which divide neither 7 nor 8
    assert _block_sizes(7, 5, 8, 4, UNEVEN, 4) == (2, 3)
    assert _block_sizes(7, 5, 8, 4, TINY, 4) == (1, 1)
    assert _block_sizes(7, 5, 8, 4, 64.0, 4) == (7, 8)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("budget", [64.0, UNEVEN, TINY])
def test_fp32_matches_naive(make_tokens, shape, budget):
    img, im, txt, tm = make_tokens(*shape, D, seed=sum(shape))
    got = fine_grained_scores(img, im, txt, tm, memory_budget_mb=budget)
    assert got.shape == (shape[0], shape[2]) and got.dtype == torch.float32
    torch.testing.assert_close(got, _expected(img, im, txt, tm), atol=1e-5, rtol=0)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("budget", [64.0, UNEVEN, TINY])
def test_bf16_matches_naive(make_tokens, shape, budget):
    img, im, txt, tm = make_tokens(*shape, D, seed=1 + sum(shape))
    got = fine_grained_scores(
        img, im, txt, tm, compute_dtype=torch.bfloat16, memory_budget_mb=budget
    )
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, _expected(img, im, txt, tm), atol=2e-2, rtol=0)


@pytest.mark.parametrize("budget", [64.0, UNEVEN, TINY])
def test_weights_none_and_ones_are_bitwise_baseline(make_tokens, budget):
    img, im, txt, tm = make_tokens(7, 5, 8, 4, D, seed=3)
    base = fine_grained_scores(img, im, txt, tm, memory_budget_mb=budget)
    ones = fine_grained_scores(img, im, txt, tm, torch.ones(D), memory_budget_mb=budget)
    assert torch.equal(base, ones)
    # and the baseline is the max-mean score itself
    torch.testing.assert_close(base, _expected(img, im, txt, tm), atol=1e-5, rtol=0)


@pytest.mark.parametrize("budget", [64.0, UNEVEN, TINY])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_weights_applied_per_column(make_tokens, budget, dtype):
    img, im, txt, tm = make_tokens(7, 5, 8, 4, D, seed=4)
    w = torch.rand(D, generator=torch.Generator().manual_seed(0)) * 2
    w[:3] = 0.0  # dropped columns
    got = fine_grained_scores(img, im, txt, tm, w, compute_dtype=dtype, memory_budget_mb=budget)
    atol = 1e-5 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(got, _expected(img, im, txt, tm, w), atol=atol, rtol=0)
    # the weighting is s_ij = Σ_d w_d v_id t_jd: a hand check on one pair's real tokens
    v, t = img[2][im[2]].double(), txt[5][tm[5]].double()
    s = torch.einsum("id,jd,d->ij", v, t, w.double())
    hand = s.max(1).values.mean() + s.max(0).values.mean()
    assert abs(float(got[2, 5]) - float(hand)) < atol
    # and it is not a no-op
    assert (got - fine_grained_scores(img, im, txt, tm)).abs().max() > 1e-2


def test_padding_content_is_ignored(make_tokens):
    img, im, txt, tm = make_tokens(5, 6, 6, 5, D, seed=5, garbage_pad=False)
    ref = fine_grained_scores(img, im, txt, tm)
    img2 = torch.where(im.unsqueeze(-1), img, torch.full_like(img, 5.0))
    txt2 = torch.where(tm.unsqueeze(-1), txt, torch.full_like(txt, -5.0))
    assert (~im).any() and (~tm).any()
    torch.testing.assert_close(fine_grained_scores(img2, im, txt2, tm), ref, atol=1e-6, rtol=0)


def test_single_real_token_rows(make_tokens):
    img, im, txt, tm = make_tokens(3, 4, 3, 4, D, seed=6)
    im[:] = False
    im[:, 0] = True
    tm[:] = False
    tm[:, -1] = True
    got = fine_grained_scores(img, im, txt, tm)
    # one patch, one word: S = 2 · v·t
    hand = 2 * img[:, 0] @ txt[:, -1].T
    torch.testing.assert_close(got, hand, atol=1e-6, rtol=0)


@pytest.mark.parametrize("budget", [64.0, TINY])
def test_gradient_matches_naive_autograd(make_tokens, budget):
    img, im, txt, tm = make_tokens(3, 4, 4, 3, 8, seed=7, dtype=torch.float64)
    w = torch.rand(8, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) + 0.5
    r = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))

    def grads(fn):
        a, b, c = (x.clone().requires_grad_(True) for x in (img, txt, w))
        (fn(a, im, b, tm, c).double() * r).sum().backward()
        return a.grad, b.grad, c.grad

    got = grads(
        lambda *x: fine_grained_scores(*x, compute_dtype=torch.float64, memory_budget_mb=budget)
    )
    ref = grads(naive_fine_grained_scores)
    for g, e in zip(got, ref, strict=True):
        assert g is not None and g.abs().sum() > 0
        torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-5)
    # padding tokens get exactly no gradient
    assert torch.all(got[0][~im] == 0) and torch.all(got[1][~tm] == 0)


def test_gradient_fp32_blocked_equals_unblocked(make_tokens):
    img, im, txt, tm = make_tokens(7, 5, 8, 4, D, seed=8)

    def grads(budget):
        a, b = img.clone().requires_grad_(True), txt.clone().requires_grad_(True)
        s = fine_grained_scores(a, im, b, tm, memory_budget_mb=budget)
        assert s.requires_grad
        (s * torch.arange(s.numel()).view_as(s)).sum().backward()
        return a.grad, b.grad

    for g, e in zip(grads(UNEVEN), grads(64.0), strict=True):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-5)


def test_normalize_equals_prenormalising(make_tokens):
    img, im, txt, tm = make_tokens(5, 5, 6, 4, D, seed=9)
    gen = torch.Generator().manual_seed(3)
    raw_img = img * (0.1 + 3 * torch.rand(5, 5, 1, generator=gen))
    raw_txt = txt * (0.1 + 3 * torch.rand(6, 4, 1, generator=gen))
    w = torch.rand(D, generator=gen)
    for weights in (None, w):
        got = fine_grained_scores(raw_img, im, raw_txt, tm, weights, normalize=True)
        ref = fine_grained_scores(l2_normalize(raw_img), im, l2_normalize(raw_txt), tm, weights)
        torch.testing.assert_close(got, ref, atol=1e-6, rtol=0)
        unnormalised = fine_grained_scores(raw_img, im, raw_txt, tm, weights)
        assert (unnormalised - ref).abs().max() > 1e-2  # the flag is not a no-op
    got = pair_scores(raw_img[:5], im, raw_txt[:5], tm[:5], normalize=True)
    ref = pair_scores(l2_normalize(raw_img[:5]), im, l2_normalize(raw_txt[:5]), tm[:5])
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize("with_weights", [False, True])
def test_pair_scores_is_diagonal(make_tokens, with_weights):
    img, im, txt, tm = make_tokens(6, 5, 6, 4, D, seed=10)
    w = torch.rand(D, generator=torch.Generator().manual_seed(4)) if with_weights else None
    full = fine_grained_scores(img, im, txt, tm, w)
    got = pair_scores(img, im, txt, tm, w)
    assert got.shape == (6,)
    torch.testing.assert_close(got, full.diagonal(), atol=1e-5, rtol=0)


def test_pair_scores_per_pair_weights(make_tokens):
    img, im, txt, tm = make_tokens(5, 5, 5, 4, D, seed=11)
    w = torch.rand(5, D, generator=torch.Generator().manual_seed(5)) * 2
    got = pair_scores(img, im, txt, tm, w)
    for b in range(5):
        sl = slice(b, b + 1)
        one = naive_fine_grained_scores(img[sl], im[sl], txt[sl], tm[sl], w[b])
        assert abs(float(got[b]) - float(one[0, 0])) < 1e-5
        single = pair_scores(img[sl], im[sl], txt[sl], tm[sl], w[b])
        assert abs(float(got[b]) - float(single[0])) < 1e-6
    # per-pair weights really differ from one shared weight vector
    assert (got - pair_scores(img, im, txt, tm, w[0])).abs().max() > 1e-3


def test_pair_scores_gradient(make_tokens):
    img, im, txt, tm = make_tokens(4, 5, 4, 4, 8, seed=12, dtype=torch.float64)
    a, b = img.clone().requires_grad_(True), txt.clone().requires_grad_(True)
    pair_scores(a, im, b, tm).sum().backward()
    a2, b2 = img.clone().requires_grad_(True), txt.clone().requires_grad_(True)
    naive_fine_grained_scores(a2, im, b2, tm).diagonal().sum().backward()
    torch.testing.assert_close(a.grad, a2.grad, atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(b.grad, b2.grad, atol=1e-10, rtol=1e-8)


def test_global_scores_cosine_of_masked_mean(make_tokens):
    img, im, txt, tm = make_tokens(4, 5, 3, 6, D, seed=13)
    got = global_scores(img, im, txt, tm)
    assert got.shape == (4, 3)
    for a in range(4):
        u = img[a][im[a]].double().mean(0)
        for b in range(3):
            t = txt[b][tm[b]].double().mean(0)
            cos = float(u @ t / (u.norm() * t.norm()))
            assert abs(float(got[a, b]) - cos) < 1e-6


# ------------------------------------------------------------------------ bad inputs
def _bad_cases():
    """(name, mutate(img, im, txt, tm, w) -> args, regex the message must match)."""

    def d_mismatch(img, im, txt, tm, w):
        return img, im, txt[..., :-1], tm, None

    def img_mask_shape(img, im, txt, tm, w):
        return img, im[:, :-1], txt, tm, None

    def txt_mask_shape(img, im, txt, tm, w):
        return img, im, txt, tm[:-1], None

    def img_mask_float(img, im, txt, tm, w):
        return img, im.float(), txt, tm, None

    def txt_mask_long(img, im, txt, tm, w):
        return img, im, txt, tm.long(), None

    def empty_caption(img, im, txt, tm, w):
        tm = tm.clone()
        tm[1] = False
        return img, im, txt, tm, None

    def empty_image(img, im, txt, tm, w):
        im = im.clone()
        im[2] = False
        return img, im, txt, tm, None

    def nan_img(img, im, txt, tm, w):
        img = img.clone()
        img[0, 0, 3] = float("nan")
        return img, im, txt, tm, None

    def inf_txt(img, im, txt, tm, w):
        txt = txt.clone()
        txt[1, 0, 0] = float("inf")
        return img, im, txt, tm, None

    def weights_long(img, im, txt, tm, w):
        return img, im, txt, tm, torch.ones(D + 1)

    def weights_2d(img, im, txt, tm, w):
        return img, im, txt, tm, torch.ones(1, D)

    def weights_nan(img, im, txt, tm, w):
        w = torch.ones(D)
        w[0] = float("nan")
        return img, im, txt, tm, w

    return [
        ("d_mismatch", d_mismatch, r"img and txt.*feature dimension"),
        ("img_mask_shape", img_mask_shape, r"img_mask must have shape"),
        ("txt_mask_shape", txt_mask_shape, r"txt_mask must have shape"),
        ("img_mask_float", img_mask_float, r"img_mask must be a bool"),
        ("txt_mask_long", txt_mask_long, r"txt_mask must be a bool"),
        ("empty_caption", empty_caption, r"txt_mask.*caption 1 has no real token"),
        ("empty_image", empty_image, r"img_mask.*image 2 has no real token"),
        ("nan_img", nan_img, r"img contains NaN"),
        ("inf_txt", inf_txt, r"txt contains NaN or Inf"),
        ("weights_long", weights_long, r"weights must have shape"),
        ("weights_2d", weights_2d, r"weights must have shape"),
        ("weights_nan", weights_nan, r"weights contains NaN"),
    ]


BAD = _bad_cases()


@pytest.mark.parametrize(("mutate", "match"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_fine_grained_rejects_bad_input(make_tokens, mutate, match):
    args = mutate(*make_tokens(4, 5, 4, 4, D, seed=14), None)
    with pytest.raises(ValueError, match=match):
        fine_grained_scores(*args)


@pytest.mark.parametrize(("mutate", "match"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_pair_scores_rejects_bad_input(make_tokens, mutate, match):
    args = mutate(*make_tokens(4, 5, 4, 4, D, seed=15), None)
    with pytest.raises(ValueError, match=match):
        pair_scores(*args)


@pytest.mark.parametrize(
    ("mutate", "match"),
    [c[1:] for c in BAD if not c[0].startswith("weights")],
    ids=[c[0] for c in BAD if not c[0].startswith("weights")],
)
def test_global_scores_rejects_bad_input(make_tokens, mutate, match):
    img, im, txt, tm, _ = mutate(*make_tokens(4, 5, 4, 4, D, seed=16), None)
    with pytest.raises(ValueError, match=match):
        global_scores(img, im, txt, tm)


def test_per_pair_weights_only_in_pair_scores(make_tokens):
    img, im, txt, tm = make_tokens(4, 5, 4, 4, D, seed=17)
    with pytest.raises(ValueError, match="weights"):
        fine_grained_scores(img, im, txt, tm, torch.ones(4, D))
    with pytest.raises(ValueError, match="weights"):
        pair_scores(img, im, txt, tm, torch.ones(3, D))
    with pytest.raises(ValueError, match=r"img has 4, txt has 3"):
        pair_scores(img, im, txt[:3], tm[:3])


def test_valid_input_passes_validation(make_tokens):
    # the validators must not reject good input (guards the bad-input tests' baseline)
    img, im, txt, tm = make_tokens(4, 5, 4, 4, D, seed=14)
    fine_grained_scores(img, im, txt, tm, torch.ones(D))
    pair_scores(img, im, txt, tm, torch.ones(4, D))
    global_scores(img, im, txt, tm)


def test_inputs_that_gave_zeros_or_a_division_error_are_refused() -> None:
    """The walkthrough's reports: compute_dtype=torch.int32 returned all zeros, and items
    with no token slots at all failed with ZeroDivisionError."""
    img, txt = torch.randn(2, 3, 4), torch.randn(2, 5, 4)
    im, tm = torch.ones(2, 3, dtype=torch.bool), torch.ones(2, 5, dtype=torch.bool)
    with pytest.raises(ValueError, match="compute_dtype must be a floating-point dtype"):
        fine_grained_scores(img, im, txt, tm, compute_dtype=torch.int32)
    with pytest.raises(ValueError, match="img has 0 tokens per item"):
        fine_grained_scores(img[:, :0], im[:, :0], txt, tm)
    assert fine_grained_scores(img[:0, :0], im[:0, :0], txt, tm).shape == (0, 2)  # no images


@pytest.mark.parametrize("budget", [0, -1, float("nan")])
def test_a_memory_budget_that_is_not_positive_is_refused(budget) -> None:
    """The re-test: NaN failed as "cannot convert float NaN to integer", 0 and -1 were
    taken silently (the CLI refuses --memory-mb 0)."""
    x, m = torch.randn(2, 3, 4), torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="memory_budget_mb must be a number > 0"):
        fine_grained_scores(x, m, x, m, memory_budget_mb=budget)
