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
import re
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import torch
from tqdm.auto import tqdm

from picoalign.core.hardware import math_mode, mkl_branch
from picoalign.data.base import DataError, ImageCaptionDataset, digest, items_fingerprint
from picoalign.data.images import DECODING
from picoalign.encoders import ImageEncoder, TextEncoder, create_image_encoder, create_text_encoder
from picoalign.features.store import (
    FORMAT,
    FORMAT_VERSION,
    FeatureSet,
    TokenFeatures,
    atomic_save,
    load_features,
    load_token_features,
    read_safetensors,
    save_features,
    to_half,
)
from picoalign.fileio import make_dirs

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
    with tqdm(total=total, desc=desc, unit=unit, disable=not show) as own:
        yield own


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


def cached_features(
    kind: Literal["images", "texts"],
    dataset: ImageCaptionDataset,
    encoder: ImageEncoder | TextEncoder,
    content: Sequence[str],
    cache_dir: Path | None,
    compute: Callable[[int, int, Any], TokenFeatures],
    *,
    chunk: int,
    progress: bool = True,
    device: str | torch.device = "cpu",
) -> tuple[TokenFeatures, str | None, dict[str, str]]:
    """``kind`` features from the cache if valid for this run, else computed chunk by chunk
    (``compute(start, end, bar)`` encodes rows start..end), resuming from stored chunks.

    Also returns how the features were computed: ``{"math": …, "mkl": …}``, the math mode
    (``core.hardware.math_mode``) and the code path MKL really ran (``mkl_branch``: the same
    mode gives other bits on an AMD CPU than on an Intel one); ``"unknown"`` for caches from
    before each was recorded. Neither is part of the cache key: they change the encoders'
    rounding, not their definition, so an existing cache is kept; but a row trained on it
    reproduces bit for bit only with the same cache, so they are reported (docs/results.md,
    "Rounding")."""
    expect = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "fingerprint": dataset.fingerprint,
        "cache_key": encoder.cache_key,
        "versions": encoder.versions(),
        "count": len(content),
        "content_sha1": digest(*content),
    }
    if kind == "images" and dataset.features is None:
        expect["decoding"] = DECODING  # how images were decoded (downscaling) is part of them
    unit = "img" if kind == "images" else "cap"

    def new_bar() -> tqdm:  # made only when something is encoded: a cache hit draws no 0/N bar
        return tqdm(total=len(content), desc=f"{kind} [{encoder.name}]", unit=unit,
                    disable=not progress)  # fmt: skip

    how = _how(torch.device(device))
    if cache_dir is None or not getattr(encoder, "cacheable", True):
        with new_bar() as bar:
            return compute(0, len(content), bar), None, how
    safe_name = re.sub(r"[^A-Za-z0-9_.-]+", "_", dataset.name)[:40]
    enc_id = digest(encoder.cache_config)
    path = cache_dir / "features" / f"{safe_name}-{dataset.fingerprint}-{kind}-{enc_id}.safetensors"
    if path.exists():
        try:
            tensors, meta = read_safetensors(path)
            stale = [k for k, v in expect.items() if meta.get(k) != v]
            if not stale:
                log.info("feature cache hit: %s", path)
                feats = TokenFeatures(tensors["tokens"], tensors["mask"])
                how = {k: str(meta.get(k, "unknown")) for k in ("math", "mkl")}
                return feats, str(path), how
            log.warning("rebuilding feature cache %s: %s changed", path.name, ", ".join(stale))
        except Exception as e:  # unreadable or truncated file: rebuild it
            log.warning("rebuilding unreadable feature cache %s: %s", path.name, e)
    parts_dir = path.with_name(path.name.removesuffix(".safetensors") + ".parts")
    parts: list[tuple[torch.Tensor, torch.Tensor]] = []
    # a chunk stored in another mode or MKL path is recomputed: one file, one way of rounding
    with new_bar() as bar, _tidy(parts_dir):
        for start in range(0, len(content), chunk):
            end = min(len(content), start + chunk)
            part = parts_dir / f"{start:09d}-{end:09d}.safetensors"
            part_meta = {**expect, "rows": [start, end], **how}
            feats = _read_part(part, part_meta)
            if feats is None:
                feats = compute(start, end, bar)
                atomic_save({"tokens": feats.tokens, "mask": feats.mask}, part_meta, part)
            else:
                bar.update(end - start)
            parts.append((feats.tokens, feats.mask))
    feats = TokenFeatures.concat(parts, encoder.dim)
    meta = {
        **expect,
        "dataset": dataset.name,
        "encoder": encoder.name,
        "cache_config": encoder.cache_config,
        "preprocessing": getattr(encoder, "preprocessing", ""),
        "tokens": int(feats.tokens.shape[1]),
        "dim": feats.dim,
        **how,
    }
    atomic_save({"tokens": feats.tokens, "mask": feats.mask}, meta, path)
    shutil.rmtree(parts_dir, ignore_errors=True)
    return feats, str(path), how


def _how(device: torch.device) -> dict[str, str]:
    """How features encoded on ``device`` are rounded: the CPU's math mode and MKL path, or
    the accelerator and its name (its kernels round otherwise than any CPU)."""
    if device.type == "cpu":
        return {"math": math_mode(), "mkl": mkl_branch()}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return {"math": device.type, "mkl": f"none ({name})"}


@contextlib.contextmanager
def _tidy(parts_dir: Path) -> Iterator[None]:
    """On a stop before the first chunk is stored, leave no empty chunk folder behind."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(OSError):
            parts_dir.rmdir()  # only if empty: stored chunks are the point
        raise


def _read_part(path: Path, expect: dict[str, Any]) -> TokenFeatures | None:
    """A stored chunk if it belongs to this exact run (same metadata and rows), else None."""
    if not path.exists():
        return None
    try:
        tensors, meta = read_safetensors(path)
        if all(meta.get(k) == v for k, v in expect.items()):
            log.info("feature cache chunk reused: %s", path)
            return TokenFeatures(tensors["tokens"], tensors["mask"])
    except Exception as e:  # unreadable chunk: encode it again
        log.warning("re-encoding unreadable feature cache chunk %s: %s", path.name, e)
    return None


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
) -> FeatureSet:
    """Token features of every image and caption of ``dataset``, through the on-disk cache.

    ``texts=False`` encodes the images only (an image index needs no caption features; a
    large captioned gallery spent minutes on them): the set then has no captions.

    ``cache_dir=None`` uses :func:`default_cache_dir`; ``cache_dir=False`` disables caching.
    Encode the whole dataset once and take splits with :meth:`FeatureSet.split`: a split view
    has its own fingerprint, hence its own cache file.
    Encoders may be given as registry specs. Encoding runs in eval mode under
    ``torch.inference_mode()`` on ``device``; each encoder is put back afterwards.
    """
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

    def images_of(start: int, end: int, bar: Any) -> TokenFeatures:
        part = replace(dataset, items=items[start:end])
        try:
            return encode_images(part, img_enc, bar=bar, **kw)
        except DataError as e:  # a file the header check passed: its pixel data is broken
            raise DataError(
                f"{e}; the data check passed it (only its header and checksums are read "
                "unless --skip-bad is given, which decodes every image and drops those that "
                "fail); pass --skip-bad, or remove the entry"
            ) from None

    def texts_of(start: int, end: int, bar: Any) -> TokenFeatures:
        return encode_texts(captions[start:end], txt_enc, bar=bar, **kw)

    if not texts:
        captions, counts = [], torch.zeros(len(items), dtype=torch.long)
    images, img_path, img_how = cached_features(
        "images", dataset, img_enc, keys, root, images_of, chunk=chunk, progress=progress,
        device=device,
    )  # fmt: skip
    txt_feats, txt_path, txt_how = TokenFeatures.concat([], txt_enc.dim), None, img_how
    if texts:
        txt_feats, txt_path, txt_how = cached_features(
            "texts", dataset, txt_enc, captions, root, texts_of, chunk=chunk,
            progress=progress, device=device,
        )  # fmt: skip
    meta = {
        "dataset": dataset.name,
        "fingerprint": dataset.fingerprint,
        # the items alone (keys, splits, captions), without the image files' sizes and times
        # that the fingerprint also holds: what a resume compares (training.setup)
        "items_fingerprint": items_fingerprint(items=dataset.items),
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
