"""What a random ranking scores: the mean against an independent count and a simulation,
the spread bound against a simulation, and when the warning speaks."""

from __future__ import annotations

from math import comb

import pytest
import torch

from picoalign.evaluation import recall_metrics
from picoalign.evaluation.chance import CHANCE_SDS, at_chance_warning, chance_rsum


def random_rsums(caption_image: list[int], runs: int = 400) -> list[float]:
    """rSum of ``runs`` random score matrices on this split (another seed than simulated's)."""
    gen = torch.Generator().manual_seed(1)
    ci = torch.tensor(caption_image)
    n_img = len(set(caption_image))
    rs = [
        recall_metrics(torch.rand(n_img, len(ci), generator=gen), ci)["rsum"] for _ in range(runs)
    ]
    return rs


def simulated(caption_image: list[int], runs: int = 400) -> tuple[float, float]:
    gen = torch.Generator().manual_seed(0)
    ci = torch.tensor(caption_image)
    n_img = len(set(caption_image))
    rs = torch.tensor(
        [recall_metrics(torch.rand(n_img, len(ci), generator=gen), ci)["rsum"] for _ in range(runs)]
    )
    return float(rs.mean()), float(rs.std())


SPLITS = {
    "one caption, 150 images": list(range(150)),
    "five captions, 100 images": [i // 5 for i in range(500)],
    "ragged, 4 images (K past the pool)": [0, 0, 0, 1, 2, 2, 3, 3, 3, 3],
}


@pytest.mark.parametrize("caption_image", SPLITS.values(), ids=SPLITS.keys())
def test_the_mean_is_a_random_rankings_and_the_spread_bounds_its(caption_image) -> None:
    mean, sd = chance_rsum(caption_image)
    sim_mean, sim_sd = simulated(caption_image)
    assert mean == pytest.approx(sim_mean, abs=3 * sim_sd / 400**0.5 + 0.05)
    assert sd >= sim_sd  # an upper bound, never an underestimate
    assert sd < 2.5 * sim_sd  # and not a vacuous one


def test_the_mean_matches_the_closed_form_for_c_captions_each() -> None:
    n, c = 30, 3
    t2i = sum(min(k, n) / n for k in (1, 5, 10))
    i2t = sum(1 - comb(n * c - c, k) / comb(n * c, k) for k in (1, 5, 10))
    assert chance_rsum([i // c for i in range(n * c)])[0] == pytest.approx(100 * (t2i + i2t))


def test_the_warning_speaks_at_chance_only() -> None:
    split = list(range(150))
    mean, sd = chance_rsum(split)
    line = at_chance_warning("val", mean, split)
    assert line is not None and "no better than chance on the val split" in line
    assert f"{mean:.1f} ± {sd:.1f}" in line and "150 images" in line
    assert at_chance_warning("val", mean + CHANCE_SDS * sd - 0.1, split) is not None
    assert at_chance_warning("val", mean + CHANCE_SDS * sd + 0.1, split) is None
    assert at_chance_warning("val", 230.0, split) is None


def test_on_a_tiny_split_a_learned_model_is_not_chance_and_a_random_one_is() -> None:
    """The re-test: 10 val images with 5 captions each, a model at R@1 30% both ways (rSum
    430) was called "no better than chance" (281 ± 51 at 3 bounded sds: threshold 434.5),
    above every one of 3000 random rankings the re-test drew (max 406)."""
    split = [i // 5 for i in range(50)]
    assert at_chance_warning("val", 430.0, split) is None
    rsums = random_rsums(split)
    warned = sum(at_chance_warning("val", r, split) is not None for r in rsums)
    assert warned >= 0.97 * len(rsums)


def test_an_empty_split_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one caption"):
        chance_rsum([])
