"""Retrieval metrics under the field's protocol: METHOD.md §8.

Every image has one or more captions, every caption exactly one image (``caption_image``).

* image→text: a query image succeeds at K if the *best-ranked of its captions* is in the top K.
* text→image: a query caption succeeds at K if *its one image* is in the top K.
* R@K in percent, both ways; rSum = the sum of the six recalls (R@1/5/10 × 2 directions).

Ties count against the query: the rank of a query is the number of *wrong* candidates that
score **at least as high** as its best correct one (0 = retrieved first). Why: a scorer that
returns a constant (a collapsed model, a NaN-free but dead embedding) must not be credited
with R@1 = 100 because a sort happened to put the right item first; counting ties as losses
makes degenerate scores look as bad as they are and makes the result independent of the
order of the candidates, up to float rounding: identical captions of several images scored
in different blocks of the matrix can differ in the last bit, and then do not tie (seen on
2 of 892 such groups of a 1,000 × 5,000 matrix: a mean rank moved in its third decimal). It
also makes R@K lower than a sort's (SCAN's argsort) where caption texts repeat across
images; ``duplicate_caption_warning`` says when they do.

The median rank is the field's, ``floor(median(0-based ranks)) + 1`` (see
:func:`field_median_rank`).

The named benchmarks (COCO 5K and 1K, Flickr30K 1K) are in
:mod:`picoalign.evaluation.protocols`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

ScoresFn = Callable[[Tensor, Tensor], Tensor]
"""scores_fn(image_index, caption_index) → (len(image_index), len(caption_index)) scores."""

_CHUNK = 256  # rows of the score matrix compared at once: bounds the bool temporaries


def _check(scores: Tensor, caption_image: Tensor) -> None:
    """Raise ``ValueError`` naming the argument for malformed inputs."""
    if not isinstance(scores, Tensor) or scores.dim() != 2:
        shape = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
        raise ValueError(f"scores must be a 2-D tensor (N_img, N_cap), got {shape}")
    if not scores.is_floating_point() or not _all_finite(scores):
        raise ValueError("scores must be floating point with no NaN or Inf values")
    n_img, n_cap = scores.shape
    if n_img == 0 or n_cap == 0:
        raise ValueError(f"scores needs at least one image and one caption, got {n_img}×{n_cap}")
    if (
        not isinstance(caption_image, Tensor)
        or caption_image.shape != (n_cap,)
        or caption_image.dtype not in (torch.int64, torch.int32)
    ):
        got = (
            f"{tuple(caption_image.shape)} {caption_image.dtype}"
            if isinstance(caption_image, Tensor)
            else type(caption_image).__name__
        )
        raise ValueError(f"caption_image must be an integer tensor of shape ({n_cap},), got {got}")
    if n_cap and (int(caption_image.min()) < 0 or int(caption_image.max()) >= n_img):
        raise ValueError(f"caption_image values must lie in [0, {n_img}) (the rows of scores)")
    counts = torch.bincount(caption_image.long(), minlength=n_img)
    if bool((counts == 0).any()):
        row = int((counts == 0).nonzero()[0])
        raise ValueError(f"caption_image: image {row} has no caption (every image needs one)")


def _all_finite(scores: Tensor) -> bool:
    """``isfinite(scores).all()`` without its temporaries (at 5K × 25K, ``isfinite`` alone
    allocates more than the matrix): a finite sum proves it; only an infinite or NaN sum
    (or an overflow) is checked row chunk by row chunk."""
    if bool(torch.isfinite(scores.sum())):
        return True
    return all(bool(torch.isfinite(c).all()) for c in scores.split(_CHUNK))


def ranks(scores: Tensor, caption_image: Tensor) -> tuple[Tensor, Tensor]:
    """0-based ranks of every query: (i2t (N_img,), t2i (N_cap,)), both long.

    i2t[i] = number of captions of *other* images scoring ≥ the best of image i's captions;
    t2i[c] = number of *other* images scoring ≥ caption c's own image (ties count against).
    No N_img × N_cap mask is built: the correct entries are read by index, and counting
    "≥" over a whole row or column includes them exactly (they are the same numbers), so
    they are subtracted afterwards. Row chunks keep the temporaries small at 5K × 25K.
    """
    _check(scores, caption_image)
    scores = scores.detach()
    dev = scores.device  # scores of a model on an accelerator are counted where they are
    cap_img = caption_image.long().to(dev)
    n_img, n_cap = scores.shape
    own = scores[cap_img, torch.arange(n_cap, device=dev)]  # each caption's own image score
    best = torch.full((n_img,), -torch.inf, dtype=scores.dtype, device=dev)
    best = best.scatter_reduce(0, cap_img, own, reduce="amax")  # image's best own caption
    own_ties = torch.bincount(cap_img[own >= best[cap_img]], minlength=n_img)
    i2t = torch.empty(n_img, dtype=torch.long, device=dev)
    t2i = torch.zeros(n_cap, dtype=torch.long, device=dev)
    for i0 in range(0, n_img, _CHUNK):
        block = scores[i0 : i0 + _CHUNK]
        i2t[i0 : i0 + block.shape[0]] = (block >= best[i0 : i0 + _CHUNK, None]).sum(dim=1)
        t2i += (block >= own).sum(dim=0)
    return (i2t - own_ties).cpu(), (t2i - 1).cpu()


def _direction(r: Tensor, ks: Sequence[int]) -> dict[str, float]:
    out = {f"r{k}": 100.0 * float((r < k).double().mean()) for k in ks}
    out["medr"] = field_median_rank(r)
    out["meanr"] = float((r + 1).double().mean())
    return out


def field_median_rank(r: Tensor) -> float:
    """The median rank as SCAN, VSE++ and VSE∞ report it: ``floor(median(0-based)) + 1``,
    where an even count's median is the mean of its two middle ranks. The named protocols
    always have an even count, and the lower median of the 1-based ranks differed from the
    papers' figure (5 against 7 on one 60-image split)."""
    s = r.double().sort().values
    n = s.numel()
    return float(torch.floor((s[(n - 1) // 2] + s[n // 2]) / 2) + 1)


def recall_metrics(
    scores: Tensor, caption_image: Tensor, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, object]:
    """R@K both ways, rSum, and median / mean rank (1-based) of a full score matrix.

    Args:
        scores: (N_img, N_cap), higher = more similar.
        caption_image: (N_cap,) long, the image of each caption; every image needs ≥ 1.
        ks: the cut-offs; rSum sums R@k over ``ks`` in both directions.
    Returns: ``{"i2t": {"r1", "r5", "r10", "medr", "meanr"}, "t2i": {...}, "rsum",
    "n_images", "n_captions"}``, recalls in percent; plain Python numbers (JSON-ready).
    """
    _check_ks(ks)
    i2t, t2i = ranks(scores, caption_image)
    return metrics_from_ranks(i2t, t2i, ks)


def _check_ks(ks: Sequence[int]) -> None:
    if not ks or any(int(k) < 1 for k in ks):
        raise ValueError(f"ks must be positive cut-offs, got {tuple(ks)}")


def metrics_from_ranks(i2t: Tensor, t2i: Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict:
    """The metrics dict of :func:`recall_metrics` from 0-based ranks of both directions."""
    a, b = _direction(i2t, ks), _direction(t2i, ks)
    return {
        "i2t": a,
        "t2i": b,
        "rsum": sum(a[f"r{k}"] + b[f"r{k}"] for k in ks),
        "n_images": int(i2t.numel()),
        "n_captions": int(t2i.numel()),
    }


def blocked_recall_metrics(
    scores_fn: ScoresFn,
    n_images: int,
    caption_image: Tensor,
    *,
    memory_mb: float = 1024.0,
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, object]:
    """:func:`recall_metrics` of ``scores_fn(all images, all captions)`` within ``memory_mb``.

    If the fp32 matrix fits (COCO 5K × 25K is 500 MB), it is scored at once. Otherwise the
    ranks come from two passes that never hold more than ``memory_mb`` of scores: image-row
    blocks (each row holds all of an image's captions → image→text ranks) and caption-column
    blocks (each column holds a caption's own image → text→image ranks). Each rank is read
    within one block, so the tie rule and the result are those of the full matrix; the price
    is scoring every pair twice.
    """
    _check_ks(ks)
    cap_img = caption_image.long()
    n_cap = int(cap_img.numel())
    all_img, all_cap = torch.arange(n_images), torch.arange(n_cap)
    budget = int(memory_mb * 2**20 / 4)  # fp32 scores
    if n_images * n_cap <= budget:
        return recall_metrics(scores_fn(all_img, all_cap), cap_img, ks)
    rows, cols = max(1, budget // n_cap), max(1, budget // n_images)
    i2t = torch.empty(n_images, dtype=torch.long)
    for i0 in range(0, n_images, rows):
        img_idx = all_img[i0 : i0 + rows]
        caps = ((cap_img >= i0) & (cap_img < i0 + len(img_idx))).nonzero().squeeze(1)
        i2t[img_idx] = _row_ranks(scores_fn(img_idx, all_cap), caps, cap_img[caps] - i0)
    t2i = torch.empty(n_cap, dtype=torch.long)
    for c0 in range(0, n_cap, cols):
        cap_idx = all_cap[c0 : c0 + cols]
        t2i[cap_idx] = _column_ranks(scores_fn(all_img, cap_idx), cap_img[cap_idx])
    return metrics_from_ranks(i2t, t2i, ks)


def _column_ranks(block: Tensor, own_rows: Tensor) -> Tensor:
    """text→image ranks of a block of whole columns (each holds its caption's own image).

    A function, so the block is freed before the next one is scored (a loop variable would
    keep two blocks alive at once)."""
    own = block[own_rows, torch.arange(block.shape[1])]
    above = torch.zeros(block.shape[1], dtype=torch.long)
    for i in range(0, block.shape[0], _CHUNK):
        above += (block[i : i + _CHUNK] >= own).sum(dim=0)
    return above - 1


def _row_ranks(block: Tensor, caps: Tensor, local_img: Tensor) -> Tensor:
    """image→text ranks of a block of whole rows; ``caps`` are the columns of these images'
    own captions and ``local_img`` their row in the block (same rule as :func:`ranks`)."""
    n = block.shape[0]
    own = block[local_img, caps]
    best = torch.full((n,), -torch.inf, dtype=block.dtype).scatter_reduce(
        0, local_img, own, reduce="amax"
    )
    own_ties = torch.bincount(local_img[own >= best[local_img]], minlength=n)
    above = torch.cat(  # row chunks: a bool sum is widened to int64 (8 bytes a score)
        [
            (block[i : i + _CHUNK] >= best[i : i + _CHUNK, None]).sum(dim=1)
            for i in range(0, n, _CHUNK)
        ]
    )
    return above - own_ties


# below this many images a split's R@1 moves in steps of more than one point
SMALL_SPLIT = 100


def coarse_split_warning(split: str, n_images: int) -> str | None:
    """The one-line warning ``train`` and ``evaluate`` print for a split too small for its
    R@K to tell two models apart (None when it is large enough). Why warn rather than
    refuse: a small split is fine for a smoke run, but its rSum must not be read as a
    comparison."""
    if n_images >= SMALL_SPLIT or n_images <= 0:
        return None
    step = 100 / n_images  # 3 figures: 100, 33.3, 2.5 (".2g" printed 1e+02)
    images = "1 image" if n_images == 1 else f"{n_images} images"
    return (
        f"warning: the {split} split has {images}: its R@K moves in steps of "
        f"{step:.3g} points, too coarse to compare models or to pick an epoch"
    )


def duplicate_caption_warning(
    split: str, captions: Sequence[str], caption_image: Sequence[int]
) -> str | None:
    """The one-line warning for an evaluation split where one caption text belongs to
    several images (None when none does). Why: the protocol counts a tie against the query,
    and identical captions embed identically, so image→text can never rank such a caption
    first: with many copies ("a dog" on 500 images) its R@K is 0 whatever the model.
    Tux Paint and the scenes sets have some (the same sentence on several stamps)."""
    images_of: dict[str, set[int]] = {}
    for text, image in zip(captions, caption_image, strict=True):
        images_of.setdefault(" ".join(text.lower().split()), set()).add(int(image))
    shared = {t: imgs for t, imgs in images_of.items() if len(imgs) > 1}
    if not shared:
        return None
    n = len(set().union(*shared.values()))  # images, each once (it may share two captions)
    text, imgs = max(shared.items(), key=lambda kv: len(kv[1]))
    total = len(set(int(i) for i in caption_image))
    return (
        f"warning: in the {split} split {n} of {total} images share a caption text with "
        f"another image (e.g. {text[:60]!r} on {len(imgs)}): identical captions tie, and a "
        "tie counts against the query, so image→text ranks each no better than the number "
        "of images sharing it"
    )


def format_table(results: dict[str, dict[str, object]], digits: int = 1) -> str:
    """Side-by-side text table: one row per method, R@K both ways and rSum.

    The cut-offs are read from the first result, so tables for other ``ks`` also work.
    """
    if not results:
        raise ValueError("results must hold at least one method")
    first = next(iter(results.values()))
    ks = [k for k in first["i2t"] if k.startswith("r")]  # type: ignore[union-attr]
    name_w = max(6, *(len(n) for n in results))
    col_w = max(6, digits + 5)
    side_w = col_w * len(ks)
    head1 = f"{'':<{name_w}}  {'image→text':^{side_w}}  {'text→image':^{side_w}}  {'':>{col_w}}"
    labels = "".join(f"{'R@' + k[1:]:>{col_w}}" for k in ks)
    head2 = f"{'method':<{name_w}}  {labels}  {labels}  {'rSum':>{col_w}}"
    lines = [head1.rstrip(), head2, "-" * len(head2)]
    for name, r in results.items():
        cells = [
            "".join(f"{r[side][k]:>{col_w}.{digits}f}" for k in ks)  # type: ignore[index]
            for side in ("i2t", "t2i")
        ]
        lines.append(f"{name:<{name_w}}  {cells[0]}  {cells[1]}  {r['rsum']:>{col_w}.{digits}f}")
    return "\n".join(lines)
