"""Token-feature containers and their safetensors files.

:class:`TokenFeatures` and :class:`FeatureSet` are what every consumer (heads, losses,
evaluation) reads; the files here are written atomically (temp file + ``os.replace``) so a
killed run never leaves a half-written file that a later run would trust. The cache logic lives
in :mod:`picoalign.features.encode`, which re-exports everything public from this module.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors import SafetensorError, safe_open

from picoalign.core.similarity import masked_mean, pad_cat
from picoalign.fileio import atomic_write_safetensors

FORMAT = "picoalign-features"
FORMAT_VERSION = 1
Rows = Sequence[int] | torch.Tensor | np.ndarray


@dataclass
class TokenFeatures:
    """Token features of N rows: ``tokens (N, T, C)`` (float16, CPU) and ``mask (N, T)`` bool."""

    tokens: torch.Tensor
    mask: torch.Tensor

    def __post_init__(self) -> None:
        if self.tokens.dim() != 3 or self.mask.shape != self.tokens.shape[:2]:
            raise ValueError(
                f"tokens must be (N, T, C) and mask (N, T); got {tuple(self.tokens.shape)} "
                f"and {tuple(self.mask.shape)}"
            )
        self.mask = self.mask.bool()

    def __len__(self) -> int:
        return self.tokens.shape[0]

    @property
    def dim(self) -> int:
        return self.tokens.shape[2]

    def subset(self, rows: Rows) -> TokenFeatures:
        idx = _as_index(rows, len(self))
        return TokenFeatures(self.tokens[idx], self.mask[idx])

    def pooled(self) -> torch.Tensor:
        """Masked mean over tokens, float32 ``(N, C)``."""
        return masked_mean(self.tokens.float(), self.mask)

    @staticmethod
    def concat(parts: Sequence[tuple[torch.Tensor, torch.Tensor]], dim: int) -> TokenFeatures:
        """Stack batches of different widths: pad to the global max T with mask False."""
        if not parts:
            return TokenFeatures(
                torch.zeros(0, 1, dim, dtype=torch.float16), torch.zeros(0, 1, dtype=torch.bool)
            )
        tokens, mask = pad_cat([t.to(torch.float16) for t, _ in parts], [m for _, m in parts])
        return TokenFeatures(tokens, mask)


@dataclass
class FeatureSet:
    """Image and caption token features of one dataset, aligned with its items.

    ``images`` has one row per item (item order); ``texts`` one row per caption (items'
    captions in order); ``caption_image[j]`` is the image row of caption ``j``.
    ``image_splits`` / ``image_groups`` (per image, optional) support :meth:`split`.
    """

    images: TokenFeatures
    texts: TokenFeatures
    caption_image: torch.Tensor
    image_keys: list[str]
    captions: list[str]
    meta: dict[str, Any] = field(default_factory=dict)
    image_splits: list[str] = field(default_factory=list)
    image_groups: list[str] = field(default_factory=list)
    # key -> RGB image, where the images are files (not saved; kept by subsets): what image-
    # backbone fine-tuning reads instead of the cached image features
    image_source: Callable[[str], Image.Image] | None = field(default=None, repr=False)

    @property
    def n_images(self) -> int:
        return len(self.images)

    def digest(self) -> str:
        """SHA-256 of the features' bits (tokens, masks, caption-to-image map): the same
        digest on two machines means the frozen encoders gave them the same input, so that a
        difference between two trained models is the training's, not the encoders'."""
        h = hashlib.sha256()
        tensors = (self.images.tokens, self.images.mask, self.texts.tokens, self.texts.mask)
        for t in (*tensors, self.caption_image):
            h.update(str((t.dtype, tuple(t.shape))).encode())
            h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    def math_mode(self) -> str:
        """The math mode its features were cached in (``features.encode.cached_features``):
        ``native``, ``avx2-strict``, ``unknown`` (made in memory, or a cache from before modes
        were recorded) or ``mixed``. A model trained on them is bit-identical to another only
        on features of the same mode (docs/results.md, "Rounding")."""
        modes = {self.meta.get("image_math", "unknown"), self.meta.get("text_math", "unknown")}
        return modes.pop() if len(modes) == 1 else "mixed"

    @property
    def n_captions(self) -> int:
        return len(self.texts)

    def batch(
        self, caption_idx: torch.Tensor, device: torch.device, text_tokens: int | None = None
    ) -> tuple[torch.Tensor, ...]:
        """Training inputs of captions ``caption_idx``: their images' tokens and mask (one row
        per caption), the captions' tokens and mask, and the image rows (the positives' ids).
        ``text_tokens`` keeps only the first that many caption token slots
        (:meth:`text_width` of a batch keeps every real token)."""
        img_rows = self.caption_image[caption_idx]
        width = slice(None) if text_tokens is None else slice(0, text_tokens)
        # index_select, not tokens[rows]: the same copy, of whole rows (advanced indexing of
        # fp16 rows, with the caption width cut, copied element by element)
        return (
            self.images.tokens.index_select(0, img_rows).to(device, torch.float32),
            self.images.mask.index_select(0, img_rows).to(device),
            self.texts.tokens[:, width].index_select(0, caption_idx).to(device, torch.float32),
            self.texts.mask[:, width].index_select(0, caption_idx).to(device),
            img_rows.to(device),
        )

    def text_width(self, caption_idx: torch.Tensor) -> int:
        """The caption token slots that captions ``caption_idx`` use: one past the last slot
        that holds a real token in any of them (the slots after it are padding in all)."""
        used = self.texts.mask[caption_idx].any(dim=0).nonzero()
        return int(used.max()) + 1 if len(used) else 1

    def subset(self, image_rows: Rows) -> FeatureSet:
        """The given images (in the given order) with their captions; ``caption_image`` remapped."""
        idx = _as_index(image_rows, self.n_images)
        new_row = torch.full((self.n_images,), -1, dtype=torch.long)
        new_row[idx] = torch.arange(len(idx))
        mapped = new_row[self.caption_image]
        keep = torch.nonzero(mapped >= 0).squeeze(1)
        keep = keep[torch.argsort(mapped[keep], stable=True)]  # group by new image order
        pick = idx.tolist()
        return FeatureSet(
            images=self.images.subset(idx),
            texts=self.texts.subset(keep),
            caption_image=mapped[keep],
            image_keys=[self.image_keys[i] for i in pick],
            captions=[self.captions[j] for j in keep.tolist()],
            meta=dict(self.meta),
            image_splits=[self.image_splits[i] for i in pick] if self.image_splits else [],
            image_groups=[self.image_groups[i] for i in pick] if self.image_groups else [],
            image_source=self.image_source,
        )

    def split(self, name: str) -> FeatureSet:
        """Images of one split (``train``/``val``/``test``) and their captions."""
        if not self.image_splits:
            raise ValueError("this FeatureSet has no split labels (image_splits is empty)")
        return self.subset([i for i, s in enumerate(self.image_splits) if s == name])


def _as_index(rows: Rows, n: int) -> torch.Tensor:
    idx = torch.as_tensor(np.asarray(rows) if not isinstance(rows, torch.Tensor) else rows)
    if idx.dtype == torch.bool:
        if idx.shape != (n,):
            raise ValueError(f"boolean row mask must have shape ({n},), got {tuple(idx.shape)}")
        return torch.nonzero(idx).squeeze(1)
    return idx.long().reshape(-1)


# ---------------------------------------------------------------------------- safetensors I/O


def atomic_save(tensors: dict[str, torch.Tensor], meta: dict[str, Any], path: Path) -> None:
    """A feature file: safetensors with picoalign's metadata, written atomically."""
    atomic_write_safetensors(tensors, path, metadata={"picoalign": json.dumps(meta)})


# what reading a damaged, truncated or foreign feature file raises (safetensors' own error,
# the OS's, bad JSON metadata, a missing tensor): a cache rebuilds such a file; a bug in the
# code that reads it is not one of them and is not swallowed as "unreadable"
UNREADABLE = (SafetensorError, OSError, ValueError, KeyError)


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A feature file's tensors and picoalign metadata; raises one of :data:`UNREADABLE`."""
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, _meta(f, path)  # noqa: SIM118


def read_meta(path: Path) -> dict[str, Any]:
    """A feature file's picoalign metadata, without its tensors; raises one of
    :data:`UNREADABLE` for a file that cannot be read."""
    with safe_open(str(path), framework="pt") as f:
        return _meta(f, path)


def _meta(f: Any, path: Path) -> dict[str, Any]:
    meta = json.loads((f.metadata() or {}).get("picoalign", "{}"))
    if not isinstance(meta, dict):
        raise ValueError(f"{path.name}: its picoalign metadata is not a JSON object")
    return meta


def to_half(tokens: torch.Tensor, what: str) -> torch.Tensor:
    """float16 CPU copy; refuses values that overflow float16 rather than storing inf."""
    out = tokens.detach().to("cpu", torch.float16)
    if not torch.isfinite(out).all():
        raise ValueError(f"{what}: features are non-finite or overflow float16 (|x| > 65504)")
    return out


# ---------------------------------------------------------------------------- user files


def save_features(fs: FeatureSet, path: str | Path) -> None:
    """Write a whole FeatureSet to one safetensors file (atomically)."""
    tensors = {
        "image_tokens": fs.images.tokens,
        "image_mask": fs.images.mask,
        "text_tokens": fs.texts.tokens,
        "text_mask": fs.texts.mask,
        "caption_image": fs.caption_image.long(),
    }
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": "featureset",
        "image_keys": fs.image_keys,
        "captions": fs.captions,
        "meta": fs.meta,
        "image_splits": fs.image_splits,
        "image_groups": fs.image_groups,
    }
    atomic_save(tensors, meta, Path(path))


def load_features(path: str | Path) -> FeatureSet:
    """Read a FeatureSet written by :func:`save_features`."""
    tensors, meta = read_safetensors(Path(path))
    if meta.get("kind") != "featureset":
        raise ValueError(f"{path}: not a picoalign FeatureSet file (use load_token_features)")
    return FeatureSet(
        images=TokenFeatures(tensors["image_tokens"], tensors["image_mask"]),
        texts=TokenFeatures(tensors["text_tokens"], tensors["text_mask"]),
        caption_image=tensors["caption_image"],
        image_keys=list(meta["image_keys"]),
        captions=list(meta["captions"]),
        meta=dict(meta.get("meta", {})),
        image_splits=list(meta.get("image_splits", [])),
        image_groups=list(meta.get("image_groups", [])),
    )


def load_token_features(path: str | Path) -> TokenFeatures:
    """Token features computed elsewhere: ``.npy`` ``(N, T, C)`` or ``(N, C)``, or ``.npz`` /
    ``.safetensors`` with ``tokens`` and optional ``mask``. Without a mask, all-zero token rows
    are padding. Stored as float16 like the cache."""
    p = Path(path)
    if p.suffix == ".npy":
        arrays: dict[str, Any] = {"tokens": np.load(p)}
    elif p.suffix == ".npz":
        with np.load(p) as z:
            arrays = {k: z[k] for k in z.files}
    elif p.suffix == ".safetensors":
        arrays = read_safetensors(p)[0]
    else:
        raise ValueError(f"{path}: expected .npy, .npz or .safetensors")
    if "tokens" not in arrays:
        raise ValueError(f"{path}: no 'tokens' array (found {sorted(arrays)})")
    tokens = torch.as_tensor(np.asarray(arrays["tokens"]), dtype=torch.float32)
    if tokens.dim() == 2:
        tokens = tokens.unsqueeze(1)
    mask = arrays.get("mask")
    mask_t = tokens.ne(0).any(-1) if mask is None else torch.as_tensor(np.asarray(mask)).bool()
    return TokenFeatures(to_half(tokens, str(path)), mask_t)
