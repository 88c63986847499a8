"""Performance-feedback weighting and in-batch retrieval: METHOD.md §6, picoalign.core.feedback."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from picoalign.core.feedback import feedback_weights, in_batch_ranks, retrieval_score

pytestmark = pytest.mark.usefixtures("torch_single_thread")

SETTINGS = settings(max_examples=60, deadline=None)
# bounded so Δ/τ stays within ±400: exp never underflows to 0 in float64
gain_lists = st.lists(
    st.floats(-10, 10, allow_nan=False, allow_infinity=False), min_size=2, max_size=12
)
taus = st.floats(0.05, 20.0)


@SETTINGS
@given(gains=gain_lists, tau=taus, normalize=st.sampled_from(["none", "zscore"]))
def test_omega_strictly_increasing_in_gain(gains, tau, normalize):
    g = torch.tensor(gains, dtype=torch.float64)
    w = feedback_weights(g, tau, normalize)
    assert w.dtype == torch.float64 and w.shape == g.shape
    assert abs(float(w.sum()) - 1) < 1e-12 and torch.all(w > 0)
    spread = float(g.std(unbiased=False))
    for a in range(len(gains)):
        for b in range(len(gains)):
            gap = gains[a] - gains[b]
            # gaps at float resolution (relative to the gains, or to their spread under
            # z-scoring) are excluded: there both orders are legitimate roundings
            scale = max(abs(gains[a]), abs(gains[b]), 1.0)
            if normalize == "zscore":
                scale = max(scale / max(spread, 1e-300), 1.0)
            if gap > 1e-9 * scale:
                assert w[a] > w[b], (a, b, gains, tau)
            elif gap == 0:
                assert w[a] == w[b]


@SETTINGS
@given(gains=gain_lists, tau=taus, normalize=st.sampled_from(["none", "zscore"]))
def test_weighted_mean_gain_at_least_uniform(gains, tau, normalize):
    g = torch.tensor(gains, dtype=torch.float64)
    w = feedback_weights(g, tau, normalize)
    assert float((w * g).sum()) >= float(g.mean()) - 1e-12


@SETTINGS
@given(gains=gain_lists)
def test_large_tau_is_uniform(gains):
    g = torch.tensor(gains, dtype=torch.float64)
    w = feedback_weights(g, 1e6)
    torch.testing.assert_close(
        w, torch.full_like(w, 1 / len(gains)), atol=1e-4 / len(gains), rtol=0
    )


@SETTINGS
@given(gains=gain_lists, normalize=st.sampled_from(["none", "zscore"]))
def test_small_tau_is_argmax(gains, normalize):
    g = torch.tensor(gains, dtype=torch.float64)
    top2 = g.topk(2).values
    assume(float(top2[0] - top2[1]) >= 1e-3)  # a unique, resolvable maximum
    w = feedback_weights(g, 1e-6, normalize)
    expected = torch.zeros_like(w)
    expected[g.argmax()] = 1.0
    torch.testing.assert_close(w, expected, atol=1e-12, rtol=0)


def test_zscore_makes_tau_scale_free():
    g = torch.tensor([1e-4, 2e-4, 4e-4], dtype=torch.float64)
    raw = feedback_weights(g, 1.0)
    z = feedback_weights(g, 1.0, "zscore")
    assert float(raw.max() - raw.min()) < 1e-3  # tiny gains: raw softmax is ~uniform
    assert float(z.max() - z.min()) > 0.3  # standardised: a clear preference
    torch.testing.assert_close(z, feedback_weights(g * 1e4, 1.0, "zscore"))
    # all-equal gains (zero spread) stay finite and uniform under z-scoring
    w = feedback_weights(torch.full((4,), 0.3, dtype=torch.float64), 0.5, "zscore")
    torch.testing.assert_close(w, torch.full_like(w, 0.25))


def test_dtype_kept():
    g = torch.tensor([0.1, 0.3], dtype=torch.float32)
    assert feedback_weights(g, 1.0).dtype == torch.float32


@pytest.mark.parametrize("tau", [0.0, -1.0])
def test_nonpositive_tau_raises(tau):
    with pytest.raises(ValueError, match="tau"):
        feedback_weights(torch.tensor([0.1, 0.2]), tau)


def test_bad_normalize_raises():
    with pytest.raises(ValueError, match="normalize"):
        feedback_weights(torch.tensor([0.1, 0.2]), 1.0, "minmax")


# ------------------------------------------------------------------- in-batch ranks
# distinct ids; row 0 has a tie with its positive (counts against it)
S_DISTINCT = torch.tensor([[0.9, 0.5, 0.9], [0.2, 0.3, 0.1], [0.8, 0.7, 0.6]])
# pairs 0 and 1 show the same image (rows 0 and 1 are that image twice)
S_DUP = torch.tensor([[0.5, 0.7, 0.6], [0.5, 0.7, 0.6], [0.4, 0.8, 0.3]])
IDS_DUP = torch.tensor([7, 7, 3])


def test_ranks_distinct_ids_with_tie():
    r_it, r_ti = in_batch_ranks(S_DISTINCT, torch.arange(3))
    assert r_it.tolist() == [1, 0, 2]
    assert r_ti.tolist() == [0, 2, 1]


def test_ranks_repeated_image_ids():
    r_it, r_ti = in_batch_ranks(S_DUP, IDS_DUP)
    # i→t: the best of the image's captions (0.7) beats its only negative (0.6); the
    # second caption scoring above the first is not a miss
    assert r_it.tolist() == [0, 0, 2]
    # t→i: caption 1's best image (0.7) is beaten by image 3 (0.8); caption 2 (image 3)
    # is beaten by the duplicated image, twice (two rows)
    assert r_ti.tolist() == [0, 1, 2]
    # without ids (diagonal positives only) the answer differs: ids are really used
    assert in_batch_ranks(S_DUP, torch.arange(3))[0].tolist() != r_it.tolist()


def test_ranks_all_tied_count_against():
    r_it, r_ti = in_batch_ranks(torch.zeros(4, 4), torch.arange(4))
    assert r_it.tolist() == [3, 3, 3, 3] and r_ti.tolist() == [3, 3, 3, 3]


def test_retrieval_score_mrr_and_rsum_by_hand():
    mrr = retrieval_score(S_DISTINCT, torch.arange(3), "mrr")
    assert math.isclose(float(mrr), (1 / 2 + 1 + 1 / 3) / 3, rel_tol=1e-6)
    rsum = retrieval_score(S_DISTINCT, torch.arange(3), "rsum")
    # R@1 = 1/3 both ways, R@5 = R@10 = 1
    assert math.isclose(float(rsum), 2 * 100 * (1 / 3 + 1 + 1), rel_tol=1e-6)
    mrr_dup = retrieval_score(S_DUP, IDS_DUP, "mrr")
    expected = 0.5 * ((1 + 1 + 1 / 3) / 3 + (1 + 1 / 2 + 1 / 3) / 3)
    assert math.isclose(float(mrr_dup), expected, rel_tol=1e-6)


def test_rsum_thresholds():
    # upper triangle above the diagonal, lower below: i→t ranks 11..0, t→i ranks 0..11
    b = 12
    s = torch.triu(torch.ones(b, b), 1) - torch.tril(torch.ones(b, b), -1)
    r_it, r_ti = in_batch_ranks(s, torch.arange(b))
    assert r_it.tolist() == list(range(b - 1, -1, -1)) and r_ti.tolist() == list(range(b))
    rsum = retrieval_score(s, torch.arange(b), "rsum")
    assert math.isclose(float(rsum), 2 * 100 * (1 + 5 + 10) / 12, rel_tol=1e-6)


def test_retrieval_score_neg_loss():
    # hardest-negative triplet, margin 0.2, per pair, negated (hand-computed)
    # rows: max(.2+.5-.9, .2+.9-.9)=.2, max(.2+.2-.3, .2+.1-.3)=.1, max(.2+.8-.6, .2+.7-.6)=.4
    # cols: max(.2+.2-.9, .2+.8-.9)=.1, max(.2+.5-.3, .2+.7-.3)=.6, max(.2+.9-.6, .2+.1-.6)=.5
    r = retrieval_score(S_DISTINCT, torch.arange(3), "neg_loss")
    assert math.isclose(float(r), -(0.2 + 0.1 + 0.4 + 0.1 + 0.6 + 0.5) / 3, rel_tol=1e-5)


def test_retrieval_score_higher_is_better():
    good = torch.eye(5) + 0.01 * torch.arange(25.0).view(5, 5)
    bad = good.T.flip(0)
    for m in ("mrr", "rsum", "neg_loss"):
        assert float(retrieval_score(good, torch.arange(5), m)) > float(
            retrieval_score(bad, torch.arange(5), m)
        )


def test_bad_metric_raises():
    with pytest.raises(ValueError, match="metric"):
        retrieval_score(S_DISTINCT, torch.arange(3), "r@1")
