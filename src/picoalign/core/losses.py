"""Alignment losses on an in-batch score matrix (METHOD.md §7).

Row a of ``scores`` is the image of pair a, column b the caption of pair b. Several pairs may
share an image (several captions per image), so positives are defined by image id, not by the
diagonal: every (a, b) with ``image_ids[a] == image_ids[b]`` is a positive and is never used
as a negative.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def positive_mask(image_ids: Tensor) -> Tensor:
    """(B, B) bool: True where row and column pairs show the same image."""
    if image_ids.dim() != 1:
        raise ValueError(f"image_ids must be 1-D (B,), got shape {tuple(image_ids.shape)}")
    return image_ids.unsqueeze(0) == image_ids.unsqueeze(1)


def _check_square(scores: Tensor, image_ids: Tensor) -> None:
    if not isinstance(image_ids, Tensor):
        raise ValueError(f"image_ids must be a tensor (B,), got {type(image_ids).__name__}")
    if scores.dim() != 2 or scores.shape[0] != scores.shape[1]:
        raise ValueError(f"scores must be a square (B, B) matrix, got {tuple(scores.shape)}")
    if image_ids.shape != (scores.shape[0],):
        raise ValueError(
            f"image_ids must have shape ({scores.shape[0]},), got {tuple(image_ids.shape)}"
        )


def triplet_loss(
    scores: Tensor, image_ids: Tensor, *, margin: float = 0.2, hardest: bool = True
) -> Tensor:
    """Hinge triplet loss, both directions (VSE++).

    ``hardest=False`` sums over all negatives (the warm-up epoch: every negative gives a
    gradient while the embedding is still random); ``hardest=True`` keeps only the hardest
    negative per positive, which is what makes fine-grained retrieval models sharp.
    Returns the sum over the batch (the field's convention, so the margin keeps its scale).
    """
    _check_square(scores, image_ids)
    if not float(margin) >= 0:  # NaN too: it gave a NaN loss, silently
        raise ValueError(f"margin must be a number >= 0, got {margin!r}")
    if scores.shape[0] == 0:  # an empty batch has no pairs: no loss, and a gradient of 0
        return scores.sum()
    pos = positive_mask(image_ids)
    diag = scores.diagonal()
    # caption negatives for each image row, image negatives for each caption column
    cost_txt = (margin + scores - diag.unsqueeze(1)).clamp_min(0).masked_fill(pos, 0)
    cost_img = (margin + scores - diag.unsqueeze(0)).clamp_min(0).masked_fill(pos, 0)
    if hardest:
        return cost_txt.amax(1).sum() + cost_img.amax(0).sum()
    return cost_txt.sum() + cost_img.sum()


def infonce_loss(scores: Tensor, image_ids: Tensor, logit_scale: Tensor | float) -> Tensor:
    """Symmetric InfoNCE (CLIP), with other positives of the same image masked out of the
    denominators so a second caption of the same image is not pushed away."""
    _check_square(scores, image_ids)
    pos = positive_mask(image_ids)
    other_pos = pos & ~torch.eye(len(image_ids), dtype=torch.bool, device=scores.device)
    logits = (scores * logit_scale).masked_fill(other_pos, float("-inf"))
    target = torch.arange(len(image_ids), device=scores.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


class TripletLoss(nn.Module):
    """Hinge triplet with a warm-up: all negatives until ``hardest`` is switched on."""

    def __init__(self, margin: float = 0.2) -> None:
        super().__init__()
        self.margin = margin
        self.hardest = False

    def forward(self, scores: Tensor, image_ids: Tensor) -> Tensor:
        return triplet_loss(scores, image_ids, margin=self.margin, hardest=self.hardest)


class InfoNCELoss(nn.Module):
    """Symmetric InfoNCE with a learnable temperature (log-parametrised, clamped as CLIP)."""

    def __init__(self, init_temperature: float = 0.07, max_scale: float = 100.0) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))
        self.max_log = math.log(max_scale)
        self.hardest = False  # accepted for interface parity with TripletLoss; unused

    @property
    def logit_scale(self) -> Tensor:
        return self.log_scale.clamp(max=self.max_log).exp()

    def forward(self, scores: Tensor, image_ids: Tensor) -> Tensor:
        return infonce_loss(scores, image_ids, self.logit_scale)


LOSSES: dict[str, type[nn.Module]] = {"triplet": TripletLoss, "infonce": InfoNCELoss}


def create_loss(name: str, **kwargs: float) -> nn.Module:
    """Build a loss by name ("triplet" | "infonce")."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {sorted(LOSSES)}")
    return LOSSES[name](**kwargs)
