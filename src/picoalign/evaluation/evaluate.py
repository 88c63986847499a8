"""The one evaluation front-end: ``evaluate(model, features, protocol, rule)``.

The CLI's ``evaluate``, the demo, validation during training and the benchmarks all call it,
so there is one way a number in a table is computed: embed the cached features with the
model (re-encoding raw inputs for a fine-tuned backbone), score blocks with the model's one
scoring dispatch (:meth:`~picoalign.model.PicoAligner.scores`) and rank them with the
protocol's rule (:func:`~picoalign.evaluation.metrics.evaluate_protocol`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from picoalign.evaluation.metrics import evaluate_protocol
from picoalign.features import FeatureSet, SourceImages


@torch.no_grad()
def embed_features(
    model: Any, fs: FeatureSet, batch_size: int = 512
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The scored token sets of ``fs``'s images and captions, on the model's device (eval
    mode). Cached backbone features go through the heads; a fine-tuned backbone re-encodes
    the raw images / captions, since its cached features are stale."""
    was = model.training
    model.eval()
    try:
        if model.config.finetune_image:
            img, img_mask = model.encode_images(SourceImages(fs))
        else:
            img, img_mask = _embed(model, model.embed_images, fs.images, batch_size)
        if model.config.trains_text:
            txt, txt_mask = model.encode_texts(fs.captions)
        else:
            txt, txt_mask = _embed(model, model.embed_texts, fs.texts, batch_size)
    finally:
        model.train(was)
    return img, img_mask, txt, txt_mask


def _embed(
    model: Any, fn: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]], feats: Any, batch: int
) -> tuple[Tensor, Tensor]:
    device = next(model.parameters()).device
    parts = [
        fn(feats.tokens[i : i + batch].to(device), feats.mask[i : i + batch].to(device))
        for i in range(0, len(feats.tokens), batch)
    ]
    return torch.cat([t for t, _ in parts]), torch.cat([m for _, m in parts])


def evaluate(
    model: Any,
    features: FeatureSet,
    protocol: str = "full",
    rule: str | None = None,
    *,
    ks: Sequence[int] = (1, 5, 10),
    memory_mb: float = 1024.0,
    memory_budget_mb: float = 64.0,
    compute_dtype: torch.dtype = torch.float32,
) -> dict[str, Any]:
    """R@K both ways and rSum of ``model`` on every image and caption of ``features``.

    ``protocol``: a name of :data:`~picoalign.evaluation.metrics.PROTOCOLS` (``full``: any
    set; ``5k`` / ``1k`` / ``flickr-1k`` check the pool size the literature uses).
    ``rule``: ``plain`` / ``weighted`` / None (the model's own), see ``PicoAligner.scores``.
    ``memory_mb`` bounds the scores held at once (a larger matrix is ranked in blocks),
    ``memory_budget_mb`` the scoring kernel's temporaries.
    """
    if features.n_images == 0:
        raise ValueError(f"{features.meta.get('dataset', 'the data')}: no images to evaluate on")
    if not memory_mb > 0:
        raise ValueError(f"memory_mb must be positive, got {memory_mb}")
    img, im, txt, tm = embed_features(model, features)

    def scores_fn(rows: Tensor, cols: Tensor) -> Tensor:
        return model.scores(
            img[rows],
            im[rows],
            txt[cols],
            tm[cols],
            rule=rule,
            memory_budget_mb=memory_budget_mb,
            compute_dtype=compute_dtype,
        ).cpu()

    return evaluate_protocol(
        protocol, scores_fn, features.n_images, features.caption_image, ks, memory_mb=memory_mb
    )
