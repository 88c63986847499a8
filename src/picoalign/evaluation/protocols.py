"""The field's named benchmarks on top of :mod:`picoalign.evaluation.metrics`.

COCO is reported on the 5K test set and as "1K": the mean of the metrics over five
consecutive 1,000-image folds, each with its own images' captions (a 1,000-image pool is an
easier task than 5,000, so the two are never mixed). Flickr30K is its 1,000-image test set.
Each scores 5 captions per image. ``coco_1k_folds`` takes a scoring function so a 5K × 25K
score matrix need never be held at once.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from picoalign.evaluation.metrics import (
    ScoresFn,
    blocked_recall_metrics,
    recall_metrics,
)


def coco_1k_folds(
    scores_fn: ScoresFn,
    n_images: int,
    caption_image: Tensor,
    folds: int = 5,
    *,
    fold_size: int = 1000,
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, object]:
    """COCO 1K: the mean of the metrics over ``folds`` consecutive ``fold_size``-image folds.

    Fold f holds images [f·fold_size, (f+1)·fold_size) and every caption of those images;
    ``scores_fn(image_index, caption_index)`` scores that subset only (so the full matrix is
    never built). Recalls, rSum and ranks are averaged over folds (rSum of the mean = mean of
    the rSums); ``n_images`` / ``n_captions`` are the pool sizes of one fold (mean), because
    that is what the recalls are relative to. Per-fold results are kept under ``"folds"``.
    Images past folds·fold_size (none for COCO's 5,000) are not used.
    """
    if not isinstance(caption_image, Tensor) or caption_image.dim() != 1:
        raise ValueError("caption_image must be a 1-D integer tensor (N_cap,)")
    if folds < 1 or fold_size < 1:
        raise ValueError(f"folds and fold_size must be ≥ 1, got {folds} and {fold_size}")
    if folds * fold_size > n_images:
        raise ValueError(
            f"n_images={n_images} is too small for {folds} folds of {fold_size} images "
            f"(COCO 1K needs the 5,000-image test split)"
        )
    cap_img = caption_image.long()
    per_fold: list[dict[str, object]] = []
    for f in range(folds):
        lo, hi = f * fold_size, (f + 1) * fold_size
        img_idx = torch.arange(lo, hi)
        cap_idx = ((cap_img >= lo) & (cap_img < hi)).nonzero().squeeze(1)
        scores = scores_fn(img_idx, cap_idx)
        if not isinstance(scores, Tensor) or scores.shape != (fold_size, cap_idx.numel()):
            got = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
            raise ValueError(
                f"scores_fn must return ({fold_size}, {cap_idx.numel()}) for fold {f}, got {got}"
            )
        per_fold.append(recall_metrics(scores, cap_img[cap_idx] - lo, ks))
    return {**mean_metrics(per_fold), "folds": per_fold}


def mean_metrics(results: Sequence[dict[str, object]]) -> dict[str, object]:
    """Average several metric dicts key by key (folds, seeds); sizes are averaged too."""
    if not results:
        raise ValueError("results must hold at least one metrics dict")
    out: dict[str, object] = {}
    for side in ("i2t", "t2i"):
        keys = results[0][side].keys()  # type: ignore[union-attr]
        out[side] = {k: sum(r[side][k] for r in results) / len(results) for k in keys}  # type: ignore[index]
    for key in ("rsum", "n_images", "n_captions"):
        mean = sum(float(r[key]) for r in results) / len(results)  # type: ignore[arg-type]
        out[key] = int(mean) if key != "rsum" and mean.is_integer() else mean
    return out


PROTOCOLS: dict[str, str] = {
    "full": "all images of the split against all their captions (any size)",
    "5k": "COCO 5K test: the full 5,000 × 25,000 matrix",
    "1k": "COCO 1K: mean over five 1,000-image folds of the 5K test set",
    "flickr-1k": "Flickr30K test: the full 1,000 × 5,000 matrix",
}
_EXPECTED_IMAGES = {"5k": 5000, "1k": 5000, "flickr-1k": 1000}
# captions per image of the named benchmarks: the field scores the first five of each image
# (Karpathy's COCO split gives some images six or seven)
PROTOCOL_CAPTIONS = 5


def first_captions(caption_image: Tensor, n_images: int, per_image: int) -> Tensor:
    """Indices (ascending) of the first ``per_image`` captions of every image, in caption
    order. Raises ValueError naming an image with fewer."""
    cap_img = caption_image.long()
    counts = torch.bincount(cap_img, minlength=n_images)
    short = (counts < per_image).nonzero().squeeze(1)
    if len(short):
        i = int(short[0])
        raise ValueError(
            f"{len(short)} of the {n_images} images have fewer than {per_image} captions "
            f"(image {i}: {int(counts[i])}), but the protocol scores {per_image} per image"
        )
    order = torch.argsort(cap_img, stable=True)  # by image, caption order kept within one
    start = torch.cumsum(counts, 0) - counts  # each image's first place in `order`
    place = torch.arange(len(order)) - start[cap_img[order]]
    return order[place < per_image].sort().values


def protocol_size_problem(name: str, n_images: int) -> str | None:
    """Why ``n_images`` images cannot be scored under protocol ``name`` (None: they can).
    Also asked before any encoding (``evaluate``), as soon as the split is known."""
    expected = _EXPECTED_IMAGES.get(name)
    if expected is None or n_images == expected:
        return None
    return f"n_images={n_images}, but protocol {name!r} needs {expected} images"


def evaluate_protocol(
    name: str,
    scores_fn: ScoresFn,
    n_images: int,
    caption_image: Tensor,
    ks: Sequence[int] = (1, 5, 10),
    *,
    memory_mb: float = 1024.0,
) -> dict[str, object]:
    """Run a named protocol (see ``PROTOCOLS``) and add ``"protocol": name`` to the result.

    ``memory_mb`` bounds the scores held at once (:func:`blocked_recall_metrics`).

    The named benchmarks check the image count, since a number reported as "COCO 5K" on a
    different pool is not comparable to the literature; use "full" for any other set. They
    score the first :data:`PROTOCOL_CAPTIONS` captions of each image, as the field does: an
    image with more has the rest left out (counted in ``"captions_left_out"``), one with
    fewer is refused.
    """
    if name not in PROTOCOLS:
        raise ValueError(f"name must be one of {sorted(PROTOCOLS)}, got {name!r}")
    expected = _EXPECTED_IMAGES.get(name)
    left_out = 0
    if expected is not None:
        size = protocol_size_problem(name, n_images)
        if size:
            raise ValueError(size)
        try:
            keep = first_captions(caption_image, n_images, PROTOCOL_CAPTIONS)
        except ValueError as e:
            raise ValueError(f"protocol {name!r}: {e}; use 'full' for this set") from None
        left_out = int(caption_image.numel()) - len(keep)
        if left_out:
            caption_image = caption_image[keep]
            scores_fn = _caption_subset(scores_fn, keep)
    if name == "1k":
        result = coco_1k_folds(scores_fn, n_images, caption_image, ks=ks)
    else:
        result = blocked_recall_metrics(
            scores_fn, n_images, caption_image, memory_mb=memory_mb, ks=ks
        )
    extra = {"captions_left_out": left_out} if left_out else {}
    return {**result, "protocol": name, **extra}


def _caption_subset(scores_fn: ScoresFn, keep: Tensor) -> ScoresFn:
    """``scores_fn`` over the captions ``keep`` only (caption j here is ``keep[j]``)."""

    def scores(img_idx: Tensor, cap_idx: Tensor) -> Tensor:
        return scores_fn(img_idx, keep[cap_idx])

    return scores
