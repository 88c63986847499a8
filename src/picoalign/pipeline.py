"""Glue between data, encoders, model and metrics — shared by training, evaluation, the CLI
and the benchmarks, so each of them is a few lines and none re-implements the others."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from picoalign.data import load_dataset
from picoalign.evaluate import recall_metrics
from picoalign.features import FeatureSet, encode_dataset
from picoalign.model import PicoAligner


def dataset_features(
    data: str,
    image_encoder: str = "efficientnet-lite0",
    text_encoder: str = "minilm",
    *,
    seed: int = 0,
    skip_bad: bool = False,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> FeatureSet:
    """Backbone token features of a dataset spec (``twemoji``, ``jsonl:PATH`` …), cached."""
    dataset = load_dataset(data, seed=seed, skip_bad=skip_bad)
    if skip_bad:  # bad image files are found only by decoding them
        dataset = dataset.drop_undecodable(progress=progress)
    if dataset.skipped:
        print(f"skipped {len(dataset.skipped)} bad entries of {data}:")
        for where, why in dataset.skipped[:20]:
            print(f"  {where}: {why}")
    if not dataset.items:
        raise ValueError(f"--data {data}: the dataset has no usable items")
    if getattr(dataset, "features", None) is not None:
        image_encoder = "precomputed"
    return encode_dataset(
        dataset, image_encoder, text_encoder, cache_dir=cache_dir, progress=progress
    )


@torch.no_grad()
def embed_features(
    model: PicoAligner, fs: FeatureSet, batch_size: int = 512
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Project cached backbone features through the model's heads (eval mode)."""
    was = model.training
    model.eval()
    try:
        img = _embed(model.embed_images, fs.images.tokens, fs.images.mask, batch_size)
        if model.config.finetune_text:  # cached text features are stale: re-encode
            txt, txt_mask = model.encode_texts(fs.captions)
        else:
            txt = _embed(model.embed_texts, fs.texts.tokens, fs.texts.mask, batch_size)
            txt_mask = fs.texts.mask
    finally:
        model.train(was)
    return img, fs.images.mask, txt, txt_mask


def _embed(fn: Any, tokens: Tensor, mask: Tensor, batch_size: int) -> Tensor:
    return torch.cat(
        [
            fn(tokens[i : i + batch_size], mask[i : i + batch_size])
            for i in range(0, len(tokens), batch_size)
        ]
    )


def evaluate_model(
    model: PicoAligner,
    fs: FeatureSet,
    *,
    memory_budget_mb: float = 64.0,
    compute_dtype: torch.dtype = torch.float32,
) -> dict[str, Any]:
    """R@1/5/10 both ways and rSum of ``model`` on the images and captions of ``fs``."""
    img, im, txt, tm = embed_features(model, fs)
    scores = model.scores(
        img, im, txt, tm, memory_budget_mb=memory_budget_mb, compute_dtype=compute_dtype
    )
    return recall_metrics(scores, fs.caption_image)


def load_model(checkpoint: str | Path) -> PicoAligner:
    """A model folder, or a training run folder (its ``best/`` model is used)."""
    path = Path(checkpoint)
    if not path.exists():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    if (path / "best" / "config.json").is_file():
        path = path / "best"
    return PicoAligner.load(path)
