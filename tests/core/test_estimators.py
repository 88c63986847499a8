"""Pseudo-semantic probability from sign statistics: METHOD.md §4, picoalign.core.estimators."""

from __future__ import annotations

import itertools

import pytest
import torch

from picoalign.core.estimators import interaction_counts, probability_from_q, semantic_probability

pytestmark = pytest.mark.usefixtures("torch_single_thread")

ESTIMATORS = ["sign", "magnitude"]
POSITIVES = ["aligned", "all"]


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("positives", POSITIVES)
@pytest.mark.parametrize("seed", [0, 1])
def test_probability_separates_semantic_columns(
    make_semantic_batch, auc, estimator, positives, seed
):
    img, im, txt, tm, semantic = make_semantic_batch(32, d=32, seed=seed)
    p = semantic_probability(img, im, txt, tm, estimator=estimator, positives=positives)
    assert p.shape == (32,)
    assert torch.all((p >= 0) & (p <= 1))
    assert auc(p, semantic) > 0.95
    # and by a margin: semantic columns well above the noise columns on average
    assert p[semantic].mean() - p[~semantic].mean() > 0.2


def _brute_all(img, im, txt, tm, estimator):
    """Every real patch × every real word of pair b, enumerated one product at a time."""
    p, d = img.shape[0], img.shape[-1]
    num, den = torch.zeros(p, d, dtype=torch.float64), torch.zeros(p, d, dtype=torch.float64)
    for b in range(p):
        for i, j in itertools.product(range(img.shape[1]), range(txt.shape[1])):
            if not (im[b, i] and tm[b, j]):
                continue
            e = img[b, i].double() * txt[b, j].double()
            if estimator == "sign":
                num[b] += (e > 0).double()
                den[b] += 1
            else:
                num[b] += e.clamp_min(0)
                den[b] += e.abs()
    return num, den


def _brute_aligned(img, im, txt, tm, estimator):
    """Each real word with its best real patch, each real patch with its best real word
    (a mutual best pair counts twice: once per side, as documented)."""
    p, d = img.shape[0], img.shape[-1]
    num, den = torch.zeros(p, d, dtype=torch.float64), torch.zeros(p, d, dtype=torch.float64)
    for b in range(p):
        v, t = img[b][im[b]].double(), txt[b][tm[b]].double()
        s = v @ t.T
        pairs = [(int(s[:, j].argmax()), j) for j in range(len(t))]
        pairs += [(i, int(s[i].argmax())) for i in range(len(v))]
        for i, j in pairs:
            e = v[i] * t[j]
            if estimator == "sign":
                num[b] += (e > 0).double()
                den[b] += 1
            else:
                num[b] += e.clamp_min(0)
                den[b] += e.abs()
    return num, den


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize(("positives", "brute"), [("all", _brute_all), ("aligned", _brute_aligned)])
def test_counts_equal_brute_force(make_tokens, estimator, positives, brute):
    img, im, txt, tm = make_tokens(4, 5, 4, 4, 6, seed=3, dtype=torch.float64)
    img, txt = img.clone(), txt.clone()
    img[0, 0, :2] = 0.0  # exact zeros: neither agree nor disagree in sign
    txt[1, 0, 3] = 0.0
    num, den = interaction_counts(img, im, txt, tm, estimator=estimator, positives=positives)
    e_num, e_den = brute(img, im, txt, tm, estimator)
    assert num.shape == den.shape == (4, 6)
    torch.testing.assert_close(num.double(), e_num, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(den.double(), e_den, atol=1e-10, rtol=1e-10)
    # semantic_probability pools the counts over pairs, then maps q → clip(2q − 1)
    q = e_num.sum(0) / e_den.sum(0)
    p = semantic_probability(img, im, txt, tm, estimator=estimator, positives=positives)
    torch.testing.assert_close(p.double(), (2 * q - 1).clamp(0, 1), atol=1e-10, rtol=0)
    raw = semantic_probability(
        img, im, txt, tm, estimator=estimator, positives=positives, transform="raw"
    )
    torch.testing.assert_close(raw.double(), q, atol=1e-10, rtol=0)


@pytest.mark.parametrize("positives", POSITIVES)
def test_padding_content_is_ignored(make_tokens, positives):
    img, im, txt, tm = make_tokens(5, 6, 5, 5, 8, seed=4, garbage_pad=False)
    assert (~im).any() and (~tm).any()
    img2 = torch.where(im.unsqueeze(-1), img, torch.full_like(img, 2.0))
    txt2 = torch.where(tm.unsqueeze(-1), txt, torch.full_like(txt, 2.0))
    for est in ESTIMATORS:
        a = interaction_counts(img, im, txt, tm, estimator=est, positives=positives)
        b = interaction_counts(img2, im, txt2, tm, estimator=est, positives=positives)
        for x, y in zip(a, b, strict=True):
            torch.testing.assert_close(x, y, atol=1e-6, rtol=0)


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("positives", POSITIVES)
def test_coin_flip_data(make_semantic_batch, estimator, positives):
    """Independent random tokens: q ≈ 1/2, so p̃ = clip(2q−1) ≈ 0 and raw q ≈ 1/2.

    The aligned positives are picked by the arg-max of the same products, which biases
    them slightly towards agreement (a selection effect that shrinks with D), hence the
    looser bounds there.
    """
    img, im, txt, tm, _ = make_semantic_batch(64, n_v=6, n_t=6, d=128, seed=5, signal=False)
    kw = {"estimator": estimator, "positives": positives}
    p = semantic_probability(img, im, txt, tm, **kw)
    raw = semantic_probability(img, im, txt, tm, transform="raw", **kw)
    # measured at D=128 (4 seeds): all ≈ 0.01–0.03 / 0.50; aligned sign ≈ 0.05 / 0.52;
    # aligned magnitude ≈ 0.11 / 0.55 (it weights the selected, largest products)
    mean_bound, raw_bound = {
        ("sign", "all"): (0.05, 0.02),
        ("magnitude", "all"): (0.05, 0.02),
        ("sign", "aligned"): (0.1, 0.05),
        ("magnitude", "aligned"): (0.2, 0.08),
    }[estimator, positives]
    assert float(p.mean()) < mean_bound
    assert abs(float(raw.mean()) - 0.5) < raw_bound
    # contrast: with a shared signal the same estimator is far from a coin flip
    img, im, txt, tm, _ = make_semantic_batch(64, n_v=6, n_t=6, d=128, seed=5)
    assert float(semantic_probability(img, im, txt, tm, **kw).mean()) > 2 * mean_bound


def test_probability_from_q_values():
    q = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0])
    assert torch.equal(probability_from_q(q), torch.tensor([0.0, 0.0, 0.0, 0.5, 1.0]))
    assert torch.equal(probability_from_q(q, "raw"), q)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"estimator": "signs"}, "estimator"),
        ({"positives": "best"}, "positives"),
        ({"transform": "q"}, "transform"),
    ],
)
def test_bad_options_raise(make_tokens, kwargs, match):
    img, im, txt, tm = make_tokens(2, 3, 2, 3, 4)
    with pytest.raises(ValueError, match=match):
        semantic_probability(img, im, txt, tm, **kwargs)
