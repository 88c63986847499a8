"""The one evaluation front-end: ``evaluate(model, features, protocol, rule)``.

The CLI's ``evaluate``, the demo, validation during training and the benchmarks all call it,
so there is one way a number in a table is computed: embed the cached features with the
model (re-encoding raw inputs for a fine-tuned backbone), score blocks with the model's one
scoring dispatch (:meth:`~picoalign.model.PicoAligner.scores`) and rank them with the
protocol's rule (:func:`~picoalign.evaluation.protocols.evaluate_protocol`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from picoalign.core.similarity import DEFAULT_BUDGET_MB, pad_cat
from picoalign.evaluation.protocols import evaluate_protocol
from picoalign.features import FeatureSet, SourceImages
from picoalign.inputs import eval_mode

if TYPE_CHECKING:  # for the annotations only: the model layer sits above this one
    from picoalign.model import PicoAligner


class NonFiniteEmbeddings(ValueError):
    """The model embeds these inputs to NaN or Inf: its weights overflow on them (a training
    that diverged). The training loop says so by epoch; elsewhere it is a user error."""


def check_encoders(
    model: PicoAligner, fs: FeatureSet, sides: Sequence[str] = ("image", "text")
) -> None:
    """ValueError, naming both encoders, where ``fs`` holds another encoder's features than
    the model's heads take: of another width, or under another registry name (two encoders
    of one width embed to garbage without a word). A fine-tuned side re-encodes the raw
    inputs, so its cached features are not used."""
    for side in sides:
        if model.config.trains_text if side == "text" else model.config.finetune_image:
            continue
        feats = fs.images if side == "image" else fs.texts
        made, want = fs.meta.get(f"{side}_encoder"), getattr(model.config, f"{side}_encoder")
        width = getattr(model.config, f"{side}_dim")
        named = made and ":" not in f"{made}{want}" and made != want  # hf: paths vary in form
        if feats.dim != width or named:
            raise ValueError(
                f"the {side} features were made by the {side} encoder {made or '?'!r} "
                f"({feats.dim} wide), but this model's is {want!r} ({width} wide): encode the "
                f"data with the model's encoders (dataset_features(spec, "
                "model.config.image_encoder, model.config.make_text_encoder))"
            )


@torch.no_grad()
def embed_features(
    model: PicoAligner, fs: FeatureSet, batch_size: int = 512
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The scored token sets of ``fs``'s images and captions, on the model's device (eval
    mode), batch by batch through :func:`embed_rows`; features of another encoder are
    refused first (:func:`check_encoders`)."""
    check_encoders(model, fs)
    with eval_mode(model):
        img, img_mask = _embed_all(model, fs, "images", fs.n_images, batch_size)
        txt, txt_mask = _embed_all(model, fs, "captions", fs.n_captions, batch_size)
    for kind, x in (("images", img), ("captions", txt)):
        if not bool(torch.isfinite(x).all()):
            raise NonFiniteEmbeddings(
                f"the model embeds some {kind} to NaN or Inf: its weights overflow on them "
                "(did its training diverge? a lower learning rate trains a usable model)"
            )
    return img, img_mask, txt, txt_mask


def _embed_all(
    model: PicoAligner, fs: FeatureSet, kind: str, n: int, batch: int
) -> tuple[Tensor, Tensor]:
    parts = [embed_rows(model, fs, kind, slice(i, i + batch)) for i in range(0, n, batch)]
    device = next(model.parameters()).device
    return pad_cat([t for t, _ in parts], [m for _, m in parts], dim=model.config.embed_dim,
                   device=device)  # fmt: skip


@torch.no_grad()
def embed_rows(model: PicoAligner, fs: FeatureSet, kind: str, rows: slice) -> tuple[Tensor, Tensor]:
    """The scored token sets of rows ``rows`` of ``fs``'s ``images`` or ``captions``, on the
    model's device, in whatever mode the caller set (evaluation and gallery indexes both go
    through here, so both see what the model really computes).

    Cached backbone features go through the heads; a fine-tuned backbone re-encodes the raw
    images / captions instead, since its cached features are the pretrained backbone's."""
    if kind == "images":
        if model.config.finetune_image:
            return model.encode_images(SourceImages(fs)[rows])
        feats, fn = fs.images, model.embed_images
    elif kind == "captions":
        if model.config.trains_text:
            return model.encode_texts(list(fs.captions[rows]))
        feats, fn = fs.texts, model.embed_texts
    else:
        raise ValueError(f"kind must be 'images' or 'captions', got {kind!r}")
    device = next(model.parameters()).device
    return fn(feats.tokens[rows].to(device), feats.mask[rows].to(device))


def evaluate(
    model: PicoAligner,
    features: FeatureSet,
    protocol: str = "full",
    rule: str | None = None,
    *,
    ks: Sequence[int] = (1, 5, 10),
    memory_mb: float = 1024.0,
    memory_budget_mb: float = DEFAULT_BUDGET_MB,
    compute_dtype: torch.dtype = torch.float32,
) -> dict[str, Any]:
    """R@K both ways and rSum of ``model`` on every image and caption of ``features``.

    ``protocol``: a name of :data:`~picoalign.evaluation.protocols.PROTOCOLS` (``full``: any
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
