"""Frozen token features of a dataset, encoded once and cached on disk.

Frozen backbones dominate CPU cost (EfficientNet-Lite0 ~ 60 ms/image on 2 cores), while the
alignment heads train in seconds; so features are computed once per (dataset content, encoder)
and reused by every method, seed and sweep. Image and text features live in separate files,
keyed by ``dataset.fingerprint`` and the encoder's ``cache_config``: swapping only the text
encoder never re-encodes images.

Each file is safetensors (``tokens`` float16, ``mask`` bool) with a JSON metadata block that
records the encoder's full ``cache_key`` (library versions included), preprocessing and counts.
A file whose key, versions or counts differ from the current run is rebuilt in place, because
features from other library versions are not bitwise comparable (docs/ASSETS.md). Writes go to
a temp file then ``os.replace``: a killed run never leaves a half-written cache behind.

While encoding, features are written in *chunks* (``NAME.parts/START-END.safetensors``, each
with the same metadata plus its row range) every :data:`CHUNK_BATCHES` batches: a run stopped
during encoding (Ctrl-C, a bad image found late, a lost machine) resumes by encoding only the
chunks that are missing. Chunks are whole batches, so the joined result is bit-identical to
one uninterrupted encode; once complete they are joined into the one cache file and removed.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import torch

from picoalign.data.base import DataError, ImageCaptionDataset, items_fingerprint
from picoalign.data.records import FILE_IDENTITY
from picoalign.encoders import ImageEncoder, TextEncoder, create_image_encoder, create_text_encoder
from picoalign.features import reuse
from picoalign.features.cache import cached_features
from picoalign.features.store import (
    FeatureSet,
    TokenFeatures,
    load_features,
    load_token_features,
    save_features,
    to_half,
)
from picoalign.fileio import make_dirs
from picoalign.progress import progress_bar

__all__ = [
    "FeatureSet",
    "TokenFeatures",
    "default_cache_dir",
    "encode_dataset",
    "encode_images",
    "encode_texts",
    "load_features",
    "load_token_features",
    "save_features",
]

log = logging.getLogger(__name__)

CHUNK_BATCHES = 16  # batches per cache chunk: at most this much work is lost to a stop


def default_cache_dir() -> Path:
    """``$PICOALIGN_CACHE`` or ``~/.cache/picoalign`` (features go in its ``features/``)."""
    return Path(os.environ.get("PICOALIGN_CACHE") or Path.home() / ".cache" / "picoalign")


# ---------------------------------------------------------------------------- encoding


@contextlib.contextmanager
def _progress(bar: Any, total: int, desc: str, unit: str, show: bool) -> Iterator[Any]:
    """The caller's progress bar (shared across calls, closed by its owner), or a new one
    that closes when the encoding ends."""
    if bar is not None:
        yield bar
        return
    with progress_bar(total=total, desc=desc, unit=unit, disable=not show) as own:
        yield own


def encode_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch device the encoders can run on, or a ValueError that says why:
    torch's own "Torch not compiled with CUDA enabled" assertion came mid-encode."""
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device {device!r}: not a device ({str(e).splitlines()[0]})") from None
    if d.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device}: CUDA is not available on this machine")
    if d.type == "meta":
        raise ValueError(f"device {device}: the meta device holds no data; give cpu or cuda")
    return d


@contextlib.contextmanager
def _evaluating(encoder: torch.nn.Module, device: str | torch.device) -> Iterator[None]:
    """Run ``encoder`` in eval mode on ``device``; restore its mode and device afterwards."""
    params = list(encoder.parameters())
    before = params[0].device if params else torch.device("cpu")
    was_training = encoder.training
    encoder.to(device).eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        encoder.to(before).train(was_training)


def encode_images(
    dataset: ImageCaptionDataset,
    encoder: ImageEncoder,
    *,
    batch_size: int = 64,
    progress: bool = True,
    device: str | torch.device = "cpu",
    bar: Any = None,
) -> TokenFeatures:
    """Encode every item's image (no cache), loading images batch by batch.

    ``bar``: an open tqdm bar to advance instead of a new one (chunked cache writes).

    A precomputed-feature dataset (``dataset.features`` set) has no images: its stored tokens
    go through the encoder's ``from_features`` (the ``precomputed`` encoder) instead.
    """
    precomp = getattr(dataset, "features", None) is not None
    from_features = getattr(encoder, "from_features", None)
    if precomp and from_features is None:
        raise ValueError(
            f"dataset {dataset.name!r} holds precomputed features, not images: "
            "use the 'precomputed' image encoder"
        )
    parts = []
    items = dataset.items
    with (
        _evaluating(encoder, device),
        _progress(bar, len(items), f"images [{encoder.name}]", "img", progress) as bar,
    ):
        for start in range(0, len(items), batch_size):
            batch = items[start : start + batch_size]
            if precomp:
                tokens, mask = from_features(*dataset.image_features([it.key for it in batch]))
            else:
                tokens, mask = encoder(encoder.preprocess([dataset.load(it) for it in batch]))
            parts.append((to_half(tokens, encoder.name), mask.cpu()))
            bar.update(len(batch))
    return TokenFeatures.concat(parts, encoder.dim)


def encode_texts(
    texts: Sequence[str],
    encoder: TextEncoder,
    *,
    batch_size: int = 64,
    progress: bool = True,
    device: str | torch.device = "cpu",
    bar: Any = None,
) -> TokenFeatures:
    """Encode captions (no cache); batches are padded to their own max, then to the global max."""
    parts = []
    with (
        _evaluating(encoder, device),
        _progress(bar, len(texts), f"texts [{encoder.name}]", "cap", progress) as bar,
    ):
        for start in range(0, len(texts), batch_size):
            batch = list(texts[start : start + batch_size])
            tokens, mask = encoder(**encoder.tokenize(encoder.prepare(batch)))
            parts.append((to_half(tokens, encoder.name), mask.cpu()))
            bar.update(len(batch))
    return TokenFeatures.concat(parts, encoder.dim)


def encode_dataset(
    dataset: ImageCaptionDataset,
    image_encoder: ImageEncoder | str,
    text_encoder: TextEncoder | str,
    *,
    cache_dir: str | Path | Literal[False] | None = None,
    batch_size: int = 64,
    progress: bool = True,
    device: str | torch.device = "cpu",
    texts: bool = True,
    reuse_rows: bool = False,
) -> FeatureSet:
    """Token features of every image and caption of ``dataset``, through the on-disk cache.

    ``reuse_rows``: take the rows an earlier cache file of the same encoder holds (the same
    image file, unchanged; the same caption text) instead of encoding them, and store row ids
    for later encodes (:mod:`picoalign.features.reuse`). Equal to a full encode up to
    rounding, so for user data (a gallery grown by a few photos), not for built-in datasets.

    ``texts=False`` encodes the images only (an image index needs no caption features; a
    large captioned gallery spent minutes on them): the set then has no captions.

    ``cache_dir=None`` uses :func:`default_cache_dir`; ``cache_dir=False`` disables caching.
    Encode the whole dataset once and take splits with :meth:`FeatureSet.split`: a split view
    has its own fingerprint, hence its own cache file.
    Encoders may be given as registry specs. Encoding runs in eval mode under
    ``torch.inference_mode()`` on ``device``; each encoder is put back afterwards.
    """
    device = encode_device(device)  # before any model is built
    img_enc = create_image_encoder(image_encoder)
    txt_enc = create_text_encoder(text_encoder)
    root = None if cache_dir is False else Path(cache_dir or default_cache_dir())
    if root is not None:  # before any encoding, under the name the user gave it
        make_dirs(root / "features", f"the feature cache {root} (cache_dir, $PICOALIGN_CACHE)")
    items = dataset.items
    keys = [it.key for it in items]
    captions = [c for it in items for c in it.captions]
    counts = torch.tensor([len(it.captions) for it in items], dtype=torch.long)
    kw: dict[str, Any] = {"batch_size": batch_size, "progress": False, "device": device}
    chunk = batch_size * CHUNK_BATCHES  # whole batches: chunked = one-shot, bit for bit

    def images_of(rows: Sequence[int], bar: Any) -> TokenFeatures:
        part = replace(dataset, items=[items[i] for i in rows])
        try:
            return encode_images(part, img_enc, bar=bar, **kw)
        except DataError as e:  # a file the header check passed: its pixel data is broken
            if getattr(dataset, "features", None) is not None:  # precomputed: no pixels
                raise  # (its rows are read here first; --skip-bad would not drop them)
            raise DataError(
                f"{e}; the data check passed it (only its header and checksums are read "
                "unless --skip-bad is given, which decodes every image and drops those that "
                "fail); pass --skip-bad, or remove the entry"
            ) from None

    def texts_of(rows: Sequence[int], bar: Any) -> TokenFeatures:
        return encode_texts([captions[i] for i in rows], txt_enc, bar=bar, **kw)

    if not texts:
        captions, counts = [], torch.zeros(len(items), dtype=torch.long)
    reuse_rows = reuse_rows and root is not None  # row ids serve the cache only: no stat then
    images, img_path, img_how = cached_features(
        "images", dataset, img_enc, keys, root, images_of, chunk=chunk, progress=progress,
        device=device, row_ids=reuse.image_row_ids(items) if reuse_rows else None,
    )  # fmt: skip
    txt_feats, txt_path, txt_how = TokenFeatures.concat([], txt_enc.dim), None, img_how
    if texts:
        txt_feats, txt_path, txt_how = cached_features(
            "texts", dataset, txt_enc, captions, root, texts_of, chunk=chunk,
            progress=progress, device=device,
            row_ids=reuse.text_row_ids(captions) if reuse_rows else None,
        )  # fmt: skip
    meta = {
        "dataset": dataset.name,
        "fingerprint": dataset.fingerprint,
        # the items alone (keys, splits, captions), without the image files' sizes and times
        # that the fingerprint also holds: what a resume compares (training.setup)
        "items_fingerprint": items_fingerprint(items=dataset.items),
        "file_identity": FILE_IDENTITY,  # what the fingerprint reads of each image file
        "image_encoder": img_enc.name,
        "text_encoder": txt_enc.name,
        "image_cache_key": img_enc.cache_key,
        "text_cache_key": txt_enc.cache_key,
        "image_cache": img_path,
        "text_cache": txt_path,
        # the math mode and MKL path each part was encoded in (cached_features)
        "image_math": img_how["math"],
        "text_math": txt_how["math"],
        "image_mkl": img_how["mkl"],
        "image_reused": int(img_how.get("reused", 0)),  # rows copied from other cache files
        "text_mkl": txt_how["mkl"],
        "data": dict(dataset.notes),  # what was done to the data (val carve, skips)
    }
    return FeatureSet(
        images=images,
        texts=txt_feats,
        caption_image=torch.repeat_interleave(torch.arange(len(items)), counts),
        image_keys=keys,
        captions=captions,
        meta=meta,
        image_splits=[it.split for it in items],
        image_groups=[it.group for it in items],
        image_source=None if getattr(dataset, "features", None) is not None else _source(dataset),
    )


def _source(dataset: ImageCaptionDataset) -> Callable[[str], Any]:
    """key → RGB image of ``dataset`` (for fine-tuning the image backbone on raw images)."""
    by_key = {it.key: it for it in dataset.items}
    return lambda key: dataset.load(by_key[key])
