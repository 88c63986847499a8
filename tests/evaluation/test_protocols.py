"""The named benchmarks (COCO 5K/1K, Flickr30K 1K): picoalign.evaluation.protocols."""

from __future__ import annotations

import json

import pytest
import torch

from picoalign.evaluation.metrics import recall_metrics
from picoalign.evaluation.protocols import (
    PROTOCOLS,
    coco_1k_folds,
    evaluate_protocol,
    first_captions,
    mean_metrics,
)
from scores_data import synthetic_scores as _synthetic


def test_coco_folds_average_the_per_fold_metrics():
    full, cap = _synthetic(2000, 2)
    cap_perm = torch.randperm(cap.numel(), generator=torch.Generator().manual_seed(1))
    full, cap = full[:, cap_perm], cap[cap_perm]  # a fold's captions need not be contiguous
    calls = []

    def scores_fn(rows, cols):
        calls.append((rows.numel(), cols.numel()))
        return full[rows][:, cols]

    got = coco_1k_folds(scores_fn, 2000, cap, folds=5, fold_size=400)
    assert calls == [(400, 800)] * 5  # only fold-sized blocks were ever scored
    expected = []
    for f in range(5):
        rows = torch.arange(400 * f, 400 * (f + 1))
        cols = ((cap >= 400 * f) & (cap < 400 * (f + 1))).nonzero().squeeze(1)
        expected.append(recall_metrics(full[rows][:, cols], cap[cols] - 400 * f))
    for side in ("i2t", "t2i"):
        for k in ("r1", "r5", "r10", "medr", "meanr"):
            mean = sum(e[side][k] for e in expected) / 5
            assert got[side][k] == pytest.approx(mean)
    assert got["rsum"] == pytest.approx(sum(e["rsum"] for e in expected) / 5)
    assert (got["n_images"], got["n_captions"]) == (400, 800) and len(got["folds"]) == 5
    # a 400-image pool is easier than the 2,000-image one
    assert got["rsum"] > recall_metrics(full, cap)["rsum"]
    json.dumps(got)


def test_coco_folds_bad_arguments():
    full, cap = _synthetic(20, 2)
    fn = lambda r, c: full[r][:, c]  # noqa: E731
    with pytest.raises(ValueError, match="n_images"):
        coco_1k_folds(fn, 20, cap, folds=5, fold_size=5)
    with pytest.raises(ValueError, match="caption_image"):
        coco_1k_folds(fn, 20, cap.view(2, -1), folds=2, fold_size=10)
    with pytest.raises(ValueError, match="scores_fn"):
        coco_1k_folds(lambda r, c: full, 20, cap, folds=2, fold_size=10)


def test_mean_metrics_and_protocols():
    a, cap = _synthetic(10, 2, seed=1)
    b, _ = _synthetic(10, 2, seed=2)
    ma, mb = recall_metrics(a, cap), recall_metrics(b, cap)
    avg = mean_metrics([ma, mb])
    assert avg["rsum"] == pytest.approx((ma["rsum"] + mb["rsum"]) / 2)
    assert avg["n_images"] == 10
    got = evaluate_protocol("full", lambda r, c: a[r][:, c], 10, cap)
    assert got["protocol"] == "full" and got["rsum"] == pytest.approx(ma["rsum"])
    assert {"full", "5k", "1k", "flickr-1k"} <= set(PROTOCOLS)
    with pytest.raises(ValueError, match="n_images"):
        evaluate_protocol("5k", lambda r, c: a[r][:, c], 10, cap)
    with pytest.raises(ValueError, match="name"):
        evaluate_protocol("coco", lambda r, c: a[r][:, c], 10, cap)


def test_evaluate_protocol_full_uses_the_memory_bound() -> None:
    scores = torch.randn(20, 40, generator=torch.Generator().manual_seed(0))
    cap_img = torch.arange(20).repeat(2)
    shapes: list[tuple[int, int]] = []

    def scores_fn(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        shapes.append((len(rows), len(cols)))
        return scores[rows][:, cols]

    small = evaluate_protocol("full", scores_fn, 20, cap_img, memory_mb=1e-3)
    assert small == {**recall_metrics(scores, cap_img), "protocol": "full"}
    assert max(r * c for r, c in shapes) <= 1e-3 * 2**20 / 4


def _flickr_like(per_image: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """1,000 images with ``per_image[i % len]`` captions each, captions in image order, and
    scores where each caption's own image wins by its within-image position (the 6th and
    7th captions of an image are scored at random, so leaving them out changes R@K)."""
    counts = torch.tensor([per_image[i % len(per_image)] for i in range(1000)])
    cap = torch.repeat_interleave(torch.arange(1000), counts)
    gen = torch.Generator().manual_seed(0)
    scores = torch.rand(1000, len(cap), generator=gen)
    place = torch.arange(len(cap)) - (torch.cumsum(counts, 0) - counts)[cap]
    good = place < 5
    scores[cap[good], torch.arange(len(cap))[good]] += 1.0
    return scores, cap


def test_a_named_benchmark_scores_the_first_five_captions_of_each_image() -> None:
    """Karpathy's COCO gives some images 6 or 7 captions; the field scores the first 5, and a
    result labelled flickr-1k / 5k on more is not the benchmark's number."""
    scores, cap = _flickr_like([5, 7, 5, 6])
    got = evaluate_protocol("flickr-1k", lambda r, c: scores[r][:, c], 1000, cap)
    keep = first_captions(cap, 1000, 5)
    want = recall_metrics(scores[:, keep], cap[keep])
    assert got["captions_left_out"] == 750  # 250 images × 2 + 250 × 1
    assert {k: got[k] for k in want} == want
    assert got["t2i"]["r1"] == 100.0  # the 6th/7th captions (random scores) are left out
    everything = evaluate_protocol("full", lambda r, c: scores[r][:, c], 1000, cap)
    assert everything["t2i"]["r1"] < 100.0 and "captions_left_out" not in everything


def test_first_captions_keeps_caption_order_and_refuses_too_few() -> None:
    cap = torch.tensor([1, 0, 1, 0, 1, 0, 1])  # interleaved: image 1 has 4, image 0 has 3
    assert first_captions(cap, 2, 3).tolist() == [0, 1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match=r"1 of the 2 images have fewer than 4 .*image 0: 3"):
        first_captions(cap, 2, 4)


def test_a_named_benchmark_with_four_captions_per_image_is_refused() -> None:
    """The walkthrough: a Flickr test file of 1,000 images × 4 captions was reported as
    flickr-1k (the help says 1,000 × 5,000)."""
    scores, cap = _flickr_like([4])
    with pytest.raises(ValueError, match=r"protocol 'flickr-1k': 1000 of the 1000 images have "):
        evaluate_protocol("flickr-1k", lambda r, c: scores[r][:, c], 1000, cap)
