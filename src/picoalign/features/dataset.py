"""A dataset spec → its cached backbone features, and lazy access to its raw images."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from picoalign.data.base import DataError, DataProblems
from picoalign.data.check import NO_CAPTIONS, prepare_dataset
from picoalign.data.spec import reads_user_files
from picoalign.encoders import ImageEncoder, TextEncoder, create_image_encoder
from picoalign.features.encode import encode_dataset, encode_device
from picoalign.features.store import FeatureSet


def dataset_features(
    data: str,
    image_encoder: str | ImageEncoder = "efficientnet-lite0",
    text_encoder: str | TextEncoder | Callable[[], TextEncoder] = "minilm",
    *,
    seed: int = 0,
    skip_bad: bool = False,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    max_image_pixels: int | None = None,
    need_splits: Sequence[str] = (),
    need_captions: bool = False,
    trained_encoder: bool = False,
    report: Callable[[str], None] = print,
    device: str | torch.device = "cpu",
    texts: bool = True,
    check: Callable[[Any], None] | None = None,
) -> FeatureSet:
    """Backbone token features of a dataset spec (``twemoji``, ``jsonl:PATH`` …), cached.

    The whole dataset is checked first (:func:`picoalign.data.check.prepare_dataset`): bad
    entries are all reported at once (or dropped with ``skip_bad``), a missing val split is
    carved from train, and each of ``need_splits`` must be non-empty — before any encoding.

    Encoders are registry specs or instances; ``text_encoder`` may also be a factory (a model
    config's ``make_text_encoder``, with its prompt and token options), called only once the
    data has loaded and the image encoder's spec is known to be good, so a typo in either is
    reported before any weights load; ``need_captions``: data with no caption at all (a
    gallery folder) is refused before any encoding. ``device``: where the encoders run (a
    training run's own device: ``train --device cuda`` encoded on the CPU); ``texts=False``:
    images only. ``trained_encoder``: ``image_encoder`` is a trained model's (evaluate,
    index), whose head fits that backbone's tokens only, so precomputed features need a
    model trained on precomputed features (training takes them whatever the spec says).
    ``check(dataset)``: the caller's own check of the loaded dataset, before any encoding
    (``evaluate``'s protocol size: a 5K protocol on the wrong split was refused only after
    the whole split had been encoded)."""
    device = encode_device(device)  # a typo or a missing GPU said before the data loads
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
            for line in e.listing():
                print(line, file=sys.stderr)
        raise
    if need_captions and not any(it.captions for it in dataset.items):
        raise DataError(f"--data {data}: nothing to evaluate, {NO_CAPTIONS}")
    if check is not None:
        check(dataset)
    if getattr(dataset, "features", None) is not None:
        if trained_encoder and isinstance(image_encoder, str) and image_encoder != "precomputed":
            raise ValueError(
                f"{data}: precomputed image features, but this model reads images with "
                f"{image_encoder!r}: its image head fits that backbone's tokens, not these; "
                "evaluate or index it on image files, or train a model on these features"
            )
        image_encoder = "precomputed"
    elif image_encoder == "precomputed":  # a model trained on precomp: features, given images
        raise ValueError(
            f"{data}: image files, but this model was trained on precomputed image features "
            "(image encoder 'precomputed'): it has no backbone to read images; evaluate or "
            "index it on precomputed features (precomp:DIR), or search its index by text"
        )
    image_encoder = create_image_encoder(image_encoder)
    if callable(text_encoder) and not isinstance(text_encoder, TextEncoder):
        text_encoder = text_encoder()
    return encode_dataset(
        dataset, image_encoder, text_encoder, cache_dir=cache_dir, progress=progress,
        device=device, texts=texts, reuse_rows=reads_user_files(data),
    )  # fmt: skip


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
