"""Retrieval metrics: METHOD.md §8, picoalign.evaluation.metrics."""

from __future__ import annotations

import json

import pytest
import torch

from picoalign.evaluation.metrics import (
    blocked_recall_metrics,
    format_table,
    ranks,
    recall_metrics,
)
from scores_data import synthetic_scores as _synthetic


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


def test_a_split_too_small_to_compare_models_is_named_with_its_step() -> None:
    from picoalign.evaluation import SMALL_SPLIT, coarse_split_warning

    assert coarse_split_warning("val", SMALL_SPLIT) is None
    assert coarse_split_warning("val", 0) is None  # empty: an error elsewhere, not a warning
    got = coarse_split_warning("val", 40)
    assert got is not None and got.startswith("warning: the val split has 40 images")
    assert "steps of 2.5 points" in got
    # the CLI walkthrough: "1 images ... steps of 1e+02 points"
    assert "has 1 image: its R@K moves in steps of 100 points" in coarse_split_warning("val", 1)


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


def test_the_median_rank_is_the_fields() -> None:
    """The metrics walkthrough: medr was the lower median of the 1-based ranks; SCAN, VSE++
    and VSE∞ report floor(median(0-based)) + 1, the two middle ranks averaged for an even
    count (which the named protocols always have): 5 against the papers' 7 on one split."""
    import numpy as np

    from picoalign.evaluation.metrics import field_median_rank

    assert field_median_rank(torch.tensor([0, 0, 3, 5])) == 2.0  # lower median: 1
    assert field_median_rank(torch.tensor([4, 0, 9])) == 5.0
    gen = torch.Generator().manual_seed(0)
    for n in (1, 2, 7, 1000):
        r = torch.randint(0, 50, (n,), generator=gen)
        assert field_median_rank(r) == float(np.floor(np.median(r.numpy())) + 1)
