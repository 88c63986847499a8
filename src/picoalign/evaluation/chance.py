"""What a random ranking scores under the protocol, and the warning for a run that did not
beat it.

Why: a run can fail without any number going non-finite. A learning rate far too large
(``--lr 1e6``) throws the heads to a point where every hinge is saturated, the loss stays
flat and finite, and validation sits at chance; the run then finishes, saves ``best/`` and
prints an rSum that looks like a result. Only chance tells it apart, and chance depends on
the split (20 rSum on 150 images, 80 on 40), so a fixed threshold cannot.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

# how many (bounded) standard deviations above chance still read as chance. The bound is
# 1.2-1.4x the true spread (a simulation of random rankings, tests/evaluation/test_chance.py),
# so 2 of them sit 2.4-2.8 true standard deviations up: a random model stays under it in all
# but about 1 run in 100, and a model a re-test saw at R@1 30% against chance's 10% on a
# 10-image split (rSum 430 against 281) is not called chance, as it was at 3.
CHANCE_SDS = 2.0


def _hit_probability(n: int, good: int, k: int) -> float:
    """P(at least one of ``good`` correct items among ``n`` is in a random top ``k``)."""
    k = min(k, n)
    if good <= 0:
        return 0.0
    if n - good < k:
        return 1.0
    return 1.0 - math.comb(n - good, k) / math.comb(n, k)


def chance_rsum(
    caption_image: Sequence[int], ks: Sequence[int] = (1, 5, 10)
) -> tuple[float, float]:
    """Expected rSum of a random ranking on this split, and a bound on its standard deviation.

    Image→text: an image with c of the M captions succeeds at K when any of its captions is in
    a random top K; text→image: a caption succeeds at K with probability K / N. The spread is
    the sum of the six recalls' standard deviations, an upper bound on the sd of their sum
    whatever their correlation (R@1 ⊂ R@5 ⊂ R@10 move together, and the two directions of one
    random matrix are not independent either). Returns (mean, sd) in rSum points.
    """
    per_image = Counter(int(i) for i in caption_image)
    n_img, n_cap = len(per_image), sum(per_image.values())
    if n_img == 0:
        raise ValueError("chance_rsum needs at least one caption")
    mean = sd = 0.0
    for k in ks:
        hits = [_hit_probability(n_cap, c, k) for c in per_image.values()]
        p_i2t = sum(hits) / n_img
        var_i2t = sum(h * (1 - h) for h in hits) / n_img**2
        p_t2i = min(k, n_img) / n_img
        var_t2i = p_t2i * (1 - p_t2i) / n_cap
        mean += 100.0 * (p_i2t + p_t2i)
        sd += 100.0 * (math.sqrt(var_i2t) + math.sqrt(var_t2i))
    return mean, sd


def at_chance_warning(
    split: str, rsum: float, caption_image: Sequence[int], ks: Sequence[int] = (1, 5, 10)
) -> str | None:
    """The warning for a model whose best ``rsum`` on ``split`` is within
    :data:`CHANCE_SDS` standard deviations of a random ranking's (None when it is above).
    Why a warning, not an error: the run is kept as it is (it may be a deliberate smoke run),
    but its number must not be read as a result."""
    mean, sd = chance_rsum(caption_image, ks)
    if rsum > mean + CHANCE_SDS * sd:
        return None
    return (
        f"warning: the model is no better than chance on the {split} split: rSum "
        f"{rsum:.1f}, where a random ranking of its {len(set(caption_image))} images scores "
        f"{mean:.1f} ± {sd:.1f}; it did not learn"
    )
