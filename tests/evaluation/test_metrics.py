"""Retrieval metrics and protocols: METHOD.md §8, picoalign.evaluation.metrics."""

from __future__ import annotations

import json

import pytest
import torch

from picoalign.evaluation.metrics import (
    PROTOCOLS,
    blocked_recall_metrics,
    coco_1k_folds,
    evaluate_protocol,
    format_table,
    mean_metrics,
    ranks,
    recall_metrics,
)


def _t(rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_ranks_one_caption_per_image_by_hand():
    # 3 images × 3 captions, caption c belongs to image c
    s = _t([[0.9, 0.1, 0.2], [0.8, 0.7, 0.3], [0.1, 0.6, 0.5]])
    cap = torch.tensor([0, 1, 2])
    i2t, t2i = ranks(s, cap)
    # image 0: own 0.9 is best → 0; image 1: own 0.7 < 0.8 → 1; image 2: own 0.5 < 0.6 → 1
    assert i2t.tolist() == [0, 1, 1]
    # caption 0: own 0.9, column [0.9, 0.8, 0.1] → 0; caption 1: own 0.7, [0.1, 0.7, 0.6] → 0
    # caption 2: own 0.5, [0.2, 0.3, 0.5] → 0
    assert t2i.tolist() == [0, 0, 0]
    m = recall_metrics(s, cap, ks=(1, 2))
    assert m["i2t"]["r1"] == pytest.approx(100 / 3) and m["i2t"]["r2"] == 100.0
    assert m["t2i"]["r1"] == 100.0
    assert m["rsum"] == pytest.approx(100 / 3 + 100 + 100 + 100)
    assert m["i2t"]["medr"] == 2.0 and m["i2t"]["meanr"] == pytest.approx(5 / 3)
    assert (m["n_images"], m["n_captions"]) == (3, 3)


def test_multiple_captions_best_one_counts_for_image_to_text():
    # image 0 owns captions 0, 1; image 1 owns captions 2, 3, 4
    s = _t([[0.2, 0.6, 0.7, 0.1, 0.0], [0.5, 0.1, 0.3, 0.2, 0.4]])
    cap = torch.tensor([0, 0, 1, 1, 1])
    i2t, t2i = ranks(s, cap)
    # image 0: best own = 0.6; other-image captions ≥ 0.6: {0.7} → rank 1
    # image 1: best own = 0.4; other-image captions ≥ 0.4: {0.5} → rank 1
    assert i2t.tolist() == [1, 1]
    # each caption vs the one other image
    # c0: own 0.2 vs 0.5 → 1; c1: 0.6 vs 0.1 → 0; c2: 0.3 vs 0.7 → 1; c3: 0.2 vs 0.1 → 0;
    # c4: 0.4 vs 0.0 → 0
    assert t2i.tolist() == [1, 0, 1, 0, 0]
    m = recall_metrics(s, cap, ks=(1,))
    assert m["i2t"]["r1"] == 0.0 and m["t2i"]["r1"] == pytest.approx(60.0)
    assert m["rsum"] == pytest.approx(60.0)


def test_ties_count_against_the_query():
    cap = torch.tensor([0, 1, 2, 2])
    const = torch.zeros(3, 4)
    i2t, t2i = ranks(const, cap)
    # every wrong candidate ties the correct one: rank = number of wrong candidates
    assert i2t.tolist() == [3, 3, 2] and t2i.tolist() == [2, 2, 2, 2]
    assert recall_metrics(const, cap, ks=(1,))["rsum"] == 0.0
    # a tie between the image's own captions is no loss; a tie with a wrong one is
    s = _t([[0.5, 0.5, 0.1, 0.1], [0.2, 0.9, 0.3, 0.3], [0.0, 0.0, 0.4, 0.4]])
    i2t, t2i = ranks(s, cap)
    assert i2t.tolist() == [1, 0, 0]  # image 0: caption 1 (wrong) ties its 0.5
    assert t2i.tolist() == [0, 0, 0, 0]
    # the order of candidates cannot change a rank under ties
    perm = torch.tensor([3, 1, 0, 2])
    i2t_p, t2i_p = ranks(const[:, perm], cap[perm])
    assert i2t_p.tolist() == [3, 3, 2] and t2i_p.tolist() == [2, 2, 2, 2]


def test_matches_a_sorting_reference_on_random_scores():
    gen = torch.Generator().manual_seed(0)
    n_img, per = 13, 3
    cap = torch.arange(n_img).repeat_interleave(per)[torch.randperm(n_img * per, generator=gen)]
    s = torch.randn(n_img, cap.numel(), generator=gen)
    i2t, t2i = ranks(s, cap)
    for i in range(n_img):
        order = torch.argsort(s[i], descending=True, stable=True)
        first_own = int((cap[order] == i).nonzero()[0])
        assert i2t[i] == first_own
    for c in range(cap.numel()):
        order = torch.argsort(s[:, c], descending=True, stable=True)
        assert t2i[c] == int((order == cap[c]).nonzero()[0])
    m = recall_metrics(s, cap)
    assert set(m["i2t"]) == {"r1", "r5", "r10", "medr", "meanr"}
    assert m["i2t"]["r1"] <= m["i2t"]["r5"] <= m["i2t"]["r10"]
    json.dumps(m)  # plain Python numbers


def test_perfect_scores_give_full_recall():
    cap = torch.arange(6).repeat_interleave(5)
    s = (cap.unsqueeze(0) == torch.arange(6).unsqueeze(1)).float()
    m = recall_metrics(s, cap)
    assert m["rsum"] == 600.0 and m["i2t"]["medr"] == 1.0 and m["t2i"]["meanr"] == 1.0


@pytest.mark.parametrize(
    ("scores", "cap", "name"),
    [
        (torch.zeros(3), torch.tensor([0, 1, 2]), "scores"),
        (torch.zeros(2, 3, 1), torch.tensor([0, 1, 1]), "scores"),
        (torch.tensor([[1, 0], [0, 1]]), torch.tensor([0, 1]), "scores"),  # integer
        (_t([[float("nan"), 0], [0, 1]]), torch.tensor([0, 1]), "scores"),
        (torch.zeros(2, 3), torch.tensor([0, 1]), "caption_image"),  # wrong length
        (torch.zeros(2, 3), torch.tensor([0.0, 1.0, 1.0]), "caption_image"),  # float
        (torch.zeros(2, 3), torch.tensor([0, 1, 2]), "caption_image"),  # out of range
        (torch.zeros(3, 3), torch.tensor([0, 1, 1]), "caption_image"),  # image 2 uncaptioned
    ],
)
def test_bad_inputs_name_the_argument(scores, cap, name):
    with pytest.raises(ValueError, match=name):
        recall_metrics(scores, cap)


def test_bad_ks():
    with pytest.raises(ValueError, match="ks"):
        recall_metrics(torch.eye(2), torch.tensor([0, 1]), ks=(0, 5))


def _synthetic(n_img: int, per: int, seed: int = 0):
    """Noisy scores where caption c (image c // per) is more similar to its own image."""
    gen = torch.Generator().manual_seed(seed)
    cap = torch.arange(n_img).repeat_interleave(per)
    signal = (cap.unsqueeze(0) == torch.arange(n_img).unsqueeze(1)).float()
    return 2.0 * signal + torch.randn(n_img, cap.numel(), generator=gen), cap


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


def test_format_table_lists_every_method_side_by_side():
    a, cap = _synthetic(10, 2, seed=1)
    results = {"baseline": recall_metrics(a, cap), "pico (weighted)": recall_metrics(-a, cap)}
    table = format_table(results)
    lines = table.splitlines()
    assert "image→text" in lines[0] and "text→image" in lines[0]
    assert lines[1].split() == ["method", *["R@1", "R@5", "R@10"] * 2, "rSum"]
    row = next(line for line in lines if line.startswith("baseline"))
    assert f"{results['baseline']['rsum']:.1f}" in row
    assert any(line.startswith("pico (weighted)") for line in lines)
    assert len({len(line) for line in lines[1:]}) == 1  # aligned columns
    with pytest.raises(ValueError, match="results"):
        format_table({})


# ------------------------------------------------------------------ blocked evaluation


@pytest.mark.parametrize("memory_mb", [1e-4, 3e-4, 1e-3, 100.0])
def test_blocked_metrics_equal_the_full_matrix_ties_included(memory_mb: float) -> None:
    gen = torch.Generator().manual_seed(3)
    n_img = 37
    cap_img = torch.randint(0, n_img, (120,), generator=gen)
    cap_img[:n_img] = torch.arange(n_img)  # every image has a caption
    cap_img = cap_img[torch.randperm(120, generator=gen)]  # captions in any order
    scores = torch.randint(0, 6, (n_img, 120), generator=gen).float()  # many ties
    asked: list[int] = []

    def scores_fn(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        asked.append(len(rows) * len(cols))
        return scores[rows][:, cols]

    got = blocked_recall_metrics(scores_fn, n_img, cap_img, memory_mb=memory_mb)
    assert got == recall_metrics(scores, cap_img)
    budget = max(memory_mb * 2**20 / 4, max(n_img, 120))  # at least one row or column
    assert max(asked) <= budget
    assert (len(asked) == 1) == (memory_mb == 100.0)  # one pass only when the matrix fits


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


def test_a_split_too_small_to_compare_models_is_named_with_its_step() -> None:
    from picoalign.evaluation import SMALL_SPLIT, coarse_split_warning

    assert coarse_split_warning("val", SMALL_SPLIT) is None
    assert coarse_split_warning("val", 0) is None  # empty: an error elsewhere, not a warning
    got = coarse_split_warning("val", 40)
    assert got is not None and got.startswith("warning: the val split has 40 images")
    assert "steps of 2.5 points" in got


def test_duplicate_caption_warning_names_how_many_images_share_a_text() -> None:
    """The walkthrough's report: 3,000 images captioned "a {colour} {shape}" scored
    image→text R@10 = 0 with no word of why (ties count against the query)."""
    from picoalign.evaluation import duplicate_caption_warning

    assert duplicate_caption_warning("test", ["a cat", "a dog"], [0, 1]) is None
    assert duplicate_caption_warning("test", ["a cat", "A  cat"], [0, 0]) is None  # one image
    msg = duplicate_caption_warning("val", ["a cat", "A cat", "a dog", "x"], [0, 1, 2, 2])
    assert msg is not None
    assert msg.startswith("warning: in the val split 2 of 3 images share a caption text")
    assert "'a cat' on 2" in msg
    # the walkthrough's report: an image sharing two of its captions was counted twice
    msg = duplicate_caption_warning("test", ["a", "b", "a", "b"], [0, 0, 1, 1])
    assert msg is not None and "2 of 2 images" in msg
