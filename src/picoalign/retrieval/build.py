"""Building a gallery index: embed a dataset's images (or captions) once with a model, and
write the :class:`~picoalign.retrieval.index.GalleryIndex` folder that search reads.

The embeddings come from :func:`picoalign.evaluation.evaluate.embed_rows`, the path
evaluation takes too, so an index holds what the model really computes: cached backbone
features through the heads, or the raw inputs re-encoded where a backbone was fine-tuned.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from picoalign.checkpoint import untrained_note
from picoalign.config.paths import absolute_source, absolute_spec
from picoalign.core.similarity import pool_tokens
from picoalign.evaluation.evaluate import check_encoders, embed_rows
from picoalign.inputs import eval_mode
from picoalign.progress import progress_bar
from picoalign.retrieval import store
from picoalign.retrieval.index import GalleryIndex, file_stat
from picoalign.retrieval.store import DTYPES

if TYPE_CHECKING:  # for the annotations only
    from picoalign.features import FeatureSet
    from picoalign.model import PicoAligner


@torch.no_grad()
def build_index(
    model: PicoAligner,
    fs: FeatureSet,
    *,
    dataset_spec: str,
    checkpoint: str | Path,
    out: str | Path,
    dtype: str = "float16",
    first_stage: str = "flat",
    kind: str = "images",
    split: str = "all",
    seed: int = 0,
    nlist: int | None = None,
    nprobe: int | None = None,
    dataset: Any = None,
    batch_size: int = 256,
    progress: bool = True,
    max_image_pixels: int | None = None,
    overwrite: bool = False,
) -> GalleryIndex:
    """Embed the images (or, ``kind="captions"``, the captions) of FeatureSet ``fs`` once with
    ``model``'s heads and save a :class:`GalleryIndex` folder at ``out``.

    ``model`` must equal ``checkpoint``'s model (the index records both hashes);
    ``dataset_spec``/``seed`` are recorded so images can be reloaded by key; ``dataset`` (the
    loaded dataset, for item sources) is loaded from the spec when not given;
    ``max_image_pixels`` (a larger limit the images were read under) is recorded, so that a
    contact sheet reads them under it too. ``overwrite``: replace an index at ``out`` (a
    folder holding anything else is refused, before any work)."""
    out, checkpoint = Path(out).expanduser(), Path(checkpoint).expanduser()
    store.check_options(kind, dtype, first_stage)  # before the expensive part
    store.check_index_folder(out, overwrite=overwrite)
    ident = store.checkpoint_identity(model, checkpoint)
    if (note := untrained_note(model, f"an index of {checkpoint}")) is not None:
        warnings.warn(note, stacklevel=2)
    check_encoders(model, fs, ["image" if kind == "images" else "text"])
    feats = fs.images if kind == "images" else fs.texts
    if len(feats) == 0:
        hint = " (an image index holds this data: --kind images)" if kind == "captions" else ""
        raise ValueError(f"nothing to index: the feature set has no {kind}{hint}")
    n, t = feats.tokens.shape[:2]
    width = 1 if model.scorer.pooled else t  # the scorer's token set: one for pooled scorers
    tokens = torch.empty(n, width, model.config.embed_dim, dtype=DTYPES[dtype])
    masks = torch.empty(n, width, dtype=torch.bool)
    pooled = torch.empty(n, model.config.embed_dim)
    with eval_mode(model):
        for i in progress_bar(range(0, n, batch_size), desc=f"index {kind}", disable=not progress):
            rows = slice(i, i + batch_size)
            # a fine-tuned backbone re-encodes the raw inputs (its cached features are stale)
            e, m = embed_rows(model, fs, "images" if kind == "images" else "captions", rows)
            if e.shape[1] > width:
                raise ValueError(
                    f"the model gives {e.shape[1]} tokens per {kind[:-1]}, more than the "
                    f"{width} of the cached features: were they made with its encoders?"
                )
            tokens[rows], masks[rows] = 0, False  # a re-encoded batch may be narrower
            tokens[rows, : e.shape[1]], masks[rows, : e.shape[1]] = e.cpu(), m.cpu()
            pooled[rows] = pool_tokens(e, m).cpu()
    if dataset is None:
        from picoalign.data import load_dataset

        dataset = load_dataset(dataset_spec, seed=seed, skip_bad=True)  # keys -> sources only
    by_key = {it.key: it.source for it in dataset.items}
    img_rows = fs.caption_image.tolist() if kind == "captions" else range(fs.n_images)
    keys = [fs.image_keys[r] for r in img_rows]
    extra = {"captions": list(fs.captions)} if kind == "captions" else {}
    index = GalleryIndex.from_embeddings(
        tokens,
        masks,
        keys=keys,
        sources=[absolute_source(by_key.get(k, "")) for k in keys],
        pooled=pooled,
        kind=kind,
        dtype=dtype,
        first_stage=first_stage,
        nlist=nlist,
        nprobe=nprobe,
        checkpoint=str(checkpoint.resolve()),
        model=ident,
        dataset={
            "spec": absolute_spec(dataset_spec),  # the index works from any folder
            "seed": seed,
            "split": split,
            **({"max_image_pixels": max_image_pixels} if max_image_pixels else {}),
            "name": fs.meta.get("dataset", getattr(dataset, "name", "")),
            # as load_dataset gives it (before a val carve or skips): what the sheet checks
            "fingerprint": fs.meta.get("data", {}).get("source_fingerprint")
            or fs.meta.get("fingerprint", getattr(dataset, "fingerprint", "")),
        },
        # each image file's size and time when indexed: search tells an edited file apart
        source_stats=[file_stat(absolute_source(by_key.get(k, ""))) for k in keys]
        if kind == "images"
        else None,
        encoders={
            "image": model.config.image_encoder,
            "text": model.config.text_encoder,
            **{k: v for k, v in fs.meta.items() if k.endswith("cache_key")},
        },
        **extra,
    )
    index.save(out, overwrite=overwrite)
    return index
