"""Reading B (pair-adaptive p(V,T)): METHOD.md §6b, picoalign.core.adaptive."""

from __future__ import annotations

import pytest
import torch

from picoalign.core.adaptive import (
    pair_adaptive_pair_scores,
    pair_adaptive_scores,
    pair_adaptive_training_scores,
)
from picoalign.core.similarity import fine_grained_scores

pytestmark = pytest.mark.usefixtures("torch_single_thread")

D = 8


def naive_pair_probability(v, vm, t, tm, prior, lam):
    """p(V,T) by hand: the pair's aligned token pairs (each real word with its best real
    patch, each real patch with its best real word), q = share with a positive product,
    p = λ·clip(2q − 1, 0, 1) + (1 − λ)·prior."""
    V, T = v[vm].double(), t[tm].double()
    s = V @ T.T
    pairs = [(int(s[:, j].argmax()), j) for j in range(len(T))]
    pairs += [(i, int(s[i].argmax())) for i in range(len(V))]
    e = torch.stack([V[i] * T[j] for i, j in pairs])
    q = (e > 0).double().mean(0)
    return lam * (2 * q - 1).clamp(0, 1) + (1 - lam) * prior.double()


def naive_b_score(v, vm, t, tm, prior, lam, p=None):
    """Re-score the pair with its own p(V,T): max-mean of s_ij = Σ_d p_d v_id t_jd."""
    if p is None:
        p = naive_pair_probability(v, vm, t, tm, prior, lam)
    V, T = v[vm].double(), t[tm].double()
    s = (V * p) @ T.T
    return s.max(1).values.mean() + s.max(0).values.mean()


def _prior(seed=0):
    return 0.2 + torch.rand(D, generator=torch.Generator().manual_seed(seed))


def test_lambda_zero_prior_ones_is_plain(make_tokens):
    img, im, txt, tm = make_tokens(5, 5, 6, 4, D, seed=1)
    got = pair_adaptive_scores(img, im, txt, tm, prior=torch.ones(D), lam=0.0)
    torch.testing.assert_close(got, fine_grained_scores(img, im, txt, tm), atol=1e-5, rtol=0)
    # λ = 0 with another prior is reading A with that prior as the weights
    prior = _prior()
    got = pair_adaptive_scores(img, im, txt, tm, prior=prior, lam=0.0)
    ref = fine_grained_scores(img, im, txt, tm, prior)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("lam", [0.5, 1.0])
def test_matches_per_pair_naive(make_tokens, lam):
    img, im, txt, tm = make_tokens(4, 5, 5, 4, D, seed=2)
    prior = _prior(1)
    got = pair_adaptive_scores(img, im, txt, tm, prior=prior, lam=lam)
    assert got.shape == (4, 5) and got.dtype == torch.float32
    for a in range(4):
        for b in range(5):
            ref = naive_b_score(img[a], im[a], txt[b], tm[b], prior, lam)
            assert abs(float(got[a, b]) - float(ref)) < 1e-5, (a, b)
    # reading B really differs from reading A here
    assert (got - fine_grained_scores(img, im, txt, tm, prior)).abs().max() > 1e-3


def test_blocked_equals_unblocked_and_scale(make_tokens):
    img, im, txt, tm = make_tokens(7, 5, 6, 4, D, seed=3)
    prior = _prior(2)
    full = pair_adaptive_scores(img, im, txt, tm, prior=prior, lam=0.5)
    for budget in (1e-9, 0.02):  # one pair per block; a few uneven blocks
        got = pair_adaptive_scores(img, im, txt, tm, prior=prior, lam=0.5, memory_budget_mb=budget)
        torch.testing.assert_close(got, full, atol=1e-6, rtol=0)
    scaled = pair_adaptive_scores(img, im, txt, tm, prior=prior, lam=0.5, scale=1.7)
    torch.testing.assert_close(scaled, 1.7 * full, atol=1e-6, rtol=1e-6)


def test_pair_scores_of_given_pairs(make_tokens):
    img, im, txt, tm = make_tokens(5, 5, 5, 4, D, seed=4)
    prior = _prior(3)
    got = pair_adaptive_pair_scores(img, im, txt, tm, prior=prior, lam=0.5)
    full = pair_adaptive_scores(img, im, txt, tm, prior=prior, lam=0.5)
    torch.testing.assert_close(got, full.diagonal(), atol=1e-6, rtol=0)


# --------------------------------------------------------------- training rule
def _chosen_by_hand(plain, ids, k):
    """Diagonal, plus each row's and each column's k highest-scoring negatives."""
    b = plain.shape[0]
    pos = ids.unsqueeze(0) == ids.unsqueeze(1)
    chosen = torch.eye(b, dtype=torch.bool)
    for a in range(b):
        negs = [c for c in range(b) if not pos[a, c]]
        for c in sorted(negs, key=lambda c: -float(plain[a, c]))[:k]:
            chosen[a, c] = True
        negs = [r for r in range(b) if not pos[r, a]]
        for r in sorted(negs, key=lambda r: -float(plain[r, a]))[:k]:
            chosen[r, a] = True
    return chosen


@pytest.mark.parametrize(
    ("ids", "k"),
    [
        (torch.arange(6), 1),
        (torch.arange(6), 2),
        (torch.tensor([0, 0, 1, 2, 2, 3]), 1),
        (torch.tensor([0, 0, 1, 2, 2, 3]), 10),  # k beyond the number of negatives
        (torch.arange(6), 0),
    ],
)
def test_training_scores_change_only_chosen(make_tokens, ids, k):
    img, im, txt, tm = make_tokens(6, 5, 6, 4, D, seed=6)
    prior = _prior(4)
    plain = fine_grained_scores(img, im, txt, tm)
    scores, scale = pair_adaptive_training_scores(
        plain, img, im, txt, tm, ids, prior=prior, lam=0.5, hard_negatives=k
    )
    chosen = _chosen_by_hand(plain, ids, k)
    # everything else (other positives of the same image included) is the plain score
    assert torch.equal(scores[~chosen], plain[~chosen])
    # the chosen entries are B-scores times one batch constant ...
    b_naive = torch.zeros(6, 6, dtype=torch.float64)
    for a, c in chosen.nonzero().tolist():
        b_naive[a, c] = naive_b_score(img[a], im[a], txt[c], tm[c], prior, 0.5)
    expected_scale = plain.diagonal().double().mean() / b_naive.diagonal().mean()
    assert abs(float(scale) - float(expected_scale)) < 1e-5
    torch.testing.assert_close(
        scores[chosen].double(), b_naive[chosen] * expected_scale, atol=1e-5, rtol=0
    )
    # ... chosen so that the matched pairs keep their plain mean scale
    assert abs(float(scores.diagonal().mean() - plain.diagonal().mean())) < 1e-5
    assert (scores[chosen] != plain[chosen]).any()


def test_training_scores_gradient(make_tokens):
    img, im, txt, tm = make_tokens(5, 5, 5, 4, D, seed=7)
    ids, prior = torch.arange(5), _prior(5)
    a_, t_ = img.clone().requires_grad_(True), txt.clone().requires_grad_(True)
    plain = fine_grained_scores(a_, im, t_, tm)
    scores, scale = pair_adaptive_training_scores(
        plain, a_, im, t_, tm, ids, prior=prior, lam=0.5, hard_negatives=1
    )
    assert scores.requires_grad and not scale.requires_grad
    scores.sum().backward()
    assert a_.grad is not None and a_.grad.abs().sum() > 0
    assert t_.grad is not None and t_.grad.abs().sum() > 0

    # one B-scored entry alone (plain detached): its gradient is scale × the gradient of
    # the re-score with p(V,T) held fixed (p is a statistic: no gradient through it)
    a2, t2 = img.clone().requires_grad_(True), txt.clone().requires_grad_(True)
    scores2, scale2 = pair_adaptive_training_scores(
        plain.detach(), a2, im, t2, tm, ids, prior=prior, lam=0.5, hard_negatives=1
    )
    scores2[1, 1].backward()
    p = naive_pair_probability(img[1], im[1], txt[1], tm[1], prior, 0.5)
    a3, t3 = img[1].double().requires_grad_(True), txt[1].double().requires_grad_(True)
    (float(scale2) * naive_b_score(a3, im[1], t3, tm[1], prior, 0.5, p=p)).backward()
    torch.testing.assert_close(a2.grad[1].double(), a3.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(t2.grad[1].double(), t3.grad, atol=1e-5, rtol=1e-4)
    assert a2.grad[[0, 2, 3, 4]].abs().sum() == 0  # other images are not in entry (1, 1)


def test_training_scores_gradient_is_bit_reproducible_with_threads(make_tokens):
    """Reading B's training rule re-uses each image and caption in many chosen pairs; the
    gradient must sum them in a fixed order even with several threads (advanced-indexing
    backward on CPU adds with float atomics across threads and differs from run to run)."""
    img, im, txt, tm = make_tokens(64, 49, 64, 12, 64, seed=3)
    ids, prior = torch.arange(64), 0.2 + torch.rand(64, generator=torch.Generator().manual_seed(1))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        grads = []
        for _ in range(6):
            a_, t_ = img.clone().requires_grad_(True), txt.clone().requires_grad_(True)
            plain = fine_grained_scores(a_, im, t_, tm)
            scores, _ = pair_adaptive_training_scores(
                plain, a_, im, t_, tm, ids, prior=prior, lam=0.5, hard_negatives=10
            )
            (scores * torch.linspace(-1, 1, scores.numel()).view_as(scores)).sum().backward()
            grads.append((a_.grad, t_.grad))
    finally:
        torch.set_num_threads(before)
    for a_grad, t_grad in grads[1:]:
        assert torch.equal(a_grad, grads[0][0]) and torch.equal(t_grad, grads[0][1])


@pytest.mark.parametrize("ids", [torch.arange(12), torch.tensor([0, 0, 1, 2, 2, 3] * 2)])
@pytest.mark.parametrize("k", [0, 3, 20])
def test_grouped_and_pairs_layouts_agree(make_tokens, ids, k):
    """The CPU default (grouped by image) and the sync-free accelerator default (explicit
    candidate pairs) are two layouts of one rule: same scores, scale and gradients."""
    img, im, txt, tm = make_tokens(12, 6, 12, 5, D, seed=11)
    prior = _prior(12)
    out = {}
    for layout in ("grouped", "pairs"):
        a_, t_ = img.clone().requires_grad_(True), txt.clone().requires_grad_(True)
        plain = fine_grained_scores(a_, im, t_, tm)
        scores, scale = pair_adaptive_training_scores(
            plain, a_, im, t_, tm, ids, prior=prior, lam=0.5, hard_negatives=k, layout=layout
        )
        (scores * torch.linspace(-1, 1, scores.numel()).view_as(scores)).sum().backward()
        out[layout] = (scores.detach(), scale, a_.grad, t_.grad)
    for g, p in zip(out["grouped"], out["pairs"], strict=True):
        torch.testing.assert_close(g, p, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="layout"):
        pair_adaptive_training_scores(plain, img, im, txt, tm, ids, prior=prior, layout="x")


@pytest.mark.parametrize("layout", ["grouped", "pairs"])
def test_a_batch_whose_matched_pairs_score_below_zero_keeps_its_plain_scores(make_tokens, layout):
    """The walkthrough's report: with a CLIP backbone the matched pairs' mean plain score
    started negative, the B-score scale came out negative (down to -1.4e5), the loss went
    to thousands and the saved pair_scale (-10365) reversed every weighted ranking."""
    img, im, txt, tm = _opposed(8)  # every patch-word product < 0
    ids = torch.arange(8)
    plain = fine_grained_scores(img, im, txt, tm)
    assert plain.diagonal().mean() < 0
    scores, scale = pair_adaptive_training_scores(
        plain, img, im, txt, tm, ids, prior=_prior(8), lam=0.5, layout=layout
    )
    assert torch.equal(scores, plain) and scale.isnan()


def test_picos_pair_scale_ignores_a_batch_that_set_no_scale(make_tokens) -> None:
    from picoalign.core.pico import PICO, PICOConfig

    img, im, txt, tm = make_tokens(8, 6, 8, 5, D, seed=4)
    pico = PICO(PICOConfig(dim=D, warmup_steps=0)).train()
    ids = torch.arange(8)
    pico.update(img, im, txt, tm, ids)  # active, with a p
    pico.training_scores(img, im, txt, tm, ids)
    good = pico.pair_scale.clone()
    assert torch.isfinite(good) and good > 0 and not torch.equal(good, torch.ones(()))
    pico.training_scores(*_opposed(8), ids)
    assert torch.equal(pico.pair_scale, good)  # unchanged: no NaN, no sign flip


def _opposed(n: int):
    """Image tokens in the positive orthant, caption tokens in the negative one."""
    gen = torch.Generator().manual_seed(5)
    img = torch.randn(n, 6, D, generator=gen).abs()
    txt = -torch.randn(n, 5, D, generator=gen).abs()
    img, txt = img / img.norm(dim=-1, keepdim=True), txt / txt.norm(dim=-1, keepdim=True)
    return img, torch.ones(n, 6, dtype=torch.bool), txt, torch.ones(n, 5, dtype=torch.bool)


def test_no_images_or_no_captions_score_an_empty_matrix_as_the_plain_rule_does() -> None:
    """The re-test: an empty image set under the weighted rule failed with "range() arg 3
    must not be zero"; the plain rule returns (0, N)."""
    g = torch.Generator().manual_seed(0)
    txt, tm = torch.randn(3, 4, D, generator=g), torch.ones(3, 4, dtype=torch.bool)
    img, im = torch.randn(0, 5, D), torch.ones(0, 5, dtype=torch.bool)
    prior = torch.ones(D)
    assert pair_adaptive_scores(img, im, txt, tm, prior=prior, lam=0.5).shape == (0, 3)
    assert pair_adaptive_scores(txt[:, :3].clone()[:2], tm[:2, :3], txt[:0], tm[:0],
                                prior=prior, lam=0.5).shape == (2, 0)  # fmt: skip
