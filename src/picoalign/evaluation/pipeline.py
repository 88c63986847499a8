"""Glue between data, encoders, model and metrics — shared by training, evaluation, the CLI
and the benchmarks, so each of them is a few lines and none re-implements the others."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from picoalign.data.base import DataProblems
from picoalign.data.check import prepare_dataset
from picoalign.evaluation.metrics import blocked_recall_metrics
from picoalign.features.encode import FeatureSet, encode_dataset
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
    max_image_pixels: int | None = None,
    need_splits: Sequence[str] = (),
    report: Callable[[str], None] = print,
) -> FeatureSet:
    """Backbone token features of a dataset spec (``twemoji``, ``jsonl:PATH`` …), cached.

    The whole dataset is checked first (:func:`picoalign.data.check.prepare_dataset`): bad
    entries are all reported at once (or dropped with ``skip_bad``), a missing val split is
    carved from train, and each of ``need_splits`` must be non-empty — before any encoding.
    """
    try:
        dataset = prepare_dataset(
            data,
            seed=seed,
            skip_bad=skip_bad,
            max_image_pixels=max_image_pixels,
            need_splits=need_splits,
            progress=progress,
            report=report,
        )
    except DataProblems as e:
        if len(e.problems) > 1:  # the CLI prints one line: list them all above it
            for where, why in e.problems:
                print(f"  {where}: {why}", file=sys.stderr)
        raise
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
        if model.config.finetune_image:  # cached image features are stale: re-encode
            img, img_mask = model.encode_images(SourceImages(fs))
        else:
            img = _embed(model.embed_images, fs.images.tokens, fs.images.mask, batch_size)
            img_mask = fs.images.mask
        if model.config.finetune_text:  # cached text features are stale: re-encode
            txt, txt_mask = model.encode_texts(fs.captions)
        else:
            txt = _embed(model.embed_texts, fs.texts.tokens, fs.texts.mask, batch_size)
            txt_mask = fs.texts.mask
    finally:
        model.train(was)
    return img, img_mask, txt, txt_mask


class SourceImages(Sequence[Any]):
    """The images of ``fs``, decoded lazily slice by slice (never all at once)."""

    def __init__(self, fs: FeatureSet) -> None:
        if fs.image_source is None:
            raise ValueError(
                f"{fs.meta.get('dataset', 'this dataset')}: no image files to read (precomputed "
                "features?); an image backbone can be fine-tuned only on a dataset of images"
            )
        self.keys, self.load = fs.image_keys, fs.image_source

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self.load(k) for k in self.keys[i]]
        return self.load(self.keys[i])


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
    matrix_memory_mb: float = 1024.0,
    compute_dtype: torch.dtype = torch.float32,
) -> dict[str, Any]:
    """R@1/5/10 both ways and rSum of ``model`` on the images and captions of ``fs``.

    ``memory_budget_mb`` bounds the scoring kernel's temporaries, ``matrix_memory_mb`` the
    scores held at once (a larger matrix is ranked in blocks: ``blocked_recall_metrics``).
    """
    img, im, txt, tm = embed_features(model, fs)

    def scores_fn(rows: Tensor, cols: Tensor) -> Tensor:
        return model.scores(
            img[rows],
            im[rows],
            txt[cols],
            tm[cols],
            memory_budget_mb=memory_budget_mb,
            compute_dtype=compute_dtype,
        )

    return blocked_recall_metrics(
        scores_fn, fs.n_images, fs.caption_image, memory_mb=matrix_memory_mb
    )


def load_model(checkpoint: str | Path) -> PicoAligner:
    """A model folder, or a training run folder (its ``best/`` model is used)."""
    path = Path(checkpoint)
    if not path.exists():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    if (path / "best" / "config.json").is_file():
        path = path / "best"
    return PicoAligner.load(path)


class PixelBatches:
    """Backbone input for batches of captions' images, decoded ahead in worker threads.

    For image-backbone fine-tuning: ``prefetch(idx)`` starts decoding and preprocessing the
    images of captions ``idx`` (each distinct image once) while the current step computes
    (Pillow releases the GIL); ``get(idx)`` returns ``(B, 3, H, W)`` rows in caption order.
    """

    def __init__(self, model: PicoAligner, fs: FeatureSet, workers: int = 4) -> None:
        from concurrent.futures import ThreadPoolExecutor

        SourceImages(fs)  # fails early, with the dataset's name, where there are no files
        self.model, self.fs = model, fs
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="picoalign-img")
        self.pending: dict[tuple[int, ...], Any] = {}

    def _submit(self, idx: Tensor) -> tuple[list[int], list[Any]]:
        rows = self.fs.caption_image[idx].tolist()
        unique = sorted(set(rows))
        enc = self.model.backbone("image")
        load = self.fs.image_source
        futures = [
            self.pool.submit(lambda k: enc.preprocess([load(k)]), self.fs.image_keys[r])
            for r in unique
        ]
        return rows, [unique, futures]

    def prefetch(self, idx: Tensor) -> None:
        key = tuple(idx.tolist())
        if key not in self.pending:
            self.pending[key] = self._submit(idx)

    def get(self, idx: Tensor, device: torch.device) -> Tensor:
        key = tuple(idx.tolist())
        rows, (unique, futures) = self.pending.pop(key, None) or self._submit(idx)
        pixels = torch.cat([f.result() for f in futures])
        where = {r: i for i, r in enumerate(unique)}
        return pixels[[where[r] for r in rows]].to(device)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
