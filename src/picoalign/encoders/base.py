"""The encoder contract shared by every image and text encoder, plus Pillow/numpy preprocessing.

Every encoder returns *token* features ``(B, T, C)`` with a boolean validity mask ``(B, T)``:
fine-grained alignment methods need the tokens, global methods pool them. Keeping a single
shape for both modalities lets the feature cache, the heads and the losses stay modality-blind.

Each encoder also names itself for the feature cache:

* ``cache_config`` - what determines the features apart from library versions: ``settings``
  (encoder name, preprocessing, options) plus a digest of the current weights, so features of a
  fine-tuned or re-seeded encoder never hit a stale entry. The cache *file* is keyed by it.
* ``versions()`` - the library versions that can change the numbers (torch, transformers,
  Pillow, the weights package). A cache written under other versions is rebuilt in place rather
  than silently mixed with fresh features (see docs/ASSETS.md: re-extraction moves R@K).
* ``cache_key`` - both together; stored in the cache metadata and compared on load.

Preprocessing is Pillow + numpy only (torchvision does not import beside this torch).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from importlib import metadata

import numpy as np
import torch
from PIL import Image
from torch import nn

from picoalign.core.similarity import masked_mean
from picoalign.data.images import (  # one RGB and padding rule for data and encoders
    pad_to_square,
    to_rgb,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def package_version(dist: str) -> str:
    """Installed version of a distribution, or ``"absent"`` (never raises: used in cache keys)."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "absent"


def tensor_digest(module: nn.Module) -> str:
    """Short SHA-1 of a module's persistent state (parameters and buffers).

    Hashing MiniLM takes ~0.2 s, so the result is memoised on the module and recomputed only when
    a tensor is replaced or modified in place (optimizer steps and ``load_state_dict`` bump the
    tensors' version counters).
    """
    state = module.state_dict(keep_vars=True)
    stamp = tuple((k, t.data_ptr(), getattr(t, "_version", 0)) for k, t in state.items())
    memo = module.__dict__.get("_picoalign_digest")
    if memo is not None and memo[0] == stamp:
        return memo[1]
    h = hashlib.sha1()
    for name, t in sorted(state.items()):
        h.update(name.encode())
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    digest = h.hexdigest()[:12]
    module.__dict__["_picoalign_digest"] = (stamp, digest)
    return digest


class Encoder(nn.Module):
    """Common base: ``name``, ``dim`` (token feature size C) and the cache identity."""

    name: str = "encoder"
    dim: int = 0
    #: False for encoders whose output is already stored elsewhere (``precomputed``)
    cacheable: bool = True
    #: distributions whose versions are recorded in the cache key (besides torch)
    version_packages: tuple[str, ...] = ()

    @property
    def settings(self) -> str:
        """Name, preprocessing and options that determine the features (override)."""
        return self.name

    @property
    def cache_config(self) -> str:
        """``settings`` plus a digest of the current weights."""
        return f"{self.settings}|w={tensor_digest(self)}"

    def versions(self) -> dict[str, str]:
        out = {"torch": torch.__version__}
        for dist in self.version_packages:
            out[dist] = package_version(dist)
        return out

    @property
    def cache_key(self) -> str:
        vers = ",".join(f"{k}={v}" for k, v in sorted(self.versions().items()))
        return f"{self.cache_config}|{vers}"

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        for b in self.buffers():
            return b.device
        return torch.device("cpu")


class ImageEncoder(Encoder):
    """Image encoder: ``preprocess(list[PIL.Image]) -> pixels``; ``forward(pixels) -> (tok, mask)``.

    Subclasses set ``image_size``, ``mean`` and ``std`` and implement ``forward``; the default
    ``preprocess`` pads to a white square, resizes and normalises.
    """

    image_size: int = 224
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    resample: int = Image.Resampling.BICUBIC
    version_packages = ("pillow", "numpy")

    @property
    def preprocessing(self) -> str:
        """Human-readable description of the pixel pipeline (part of the cache key)."""
        mean = ",".join(f"{m:.4g}" for m in self.mean)
        std = ",".join(f"{s:.4g}" for s in self.std)
        return f"pad-white,{self.image_size}px,resample={int(self.resample)},mean={mean},std={std}"

    @property
    def settings(self) -> str:
        return f"{self.name}|{self.preprocessing}"

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return images_to_pixels(images, self.image_size, self.mean, self.std, self.resample)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def pooled(self, pixels: torch.Tensor) -> torch.Tensor:
        """One vector per image: masked mean of the tokens (``(B, C)``)."""
        tokens, mask = self(pixels)
        return masked_mean(tokens, mask)


class TextEncoder(Encoder):
    """Text encoder: ``tokenize(list[str]) -> batch``; ``forward(**batch) -> (tokens, mask)``.

    ``prompt`` is the caption template (``"an emoji of {}"``): every caller encodes
    ``prepare(texts)``, so training captions, cached features and search queries all see the
    same text, and the template is part of the cache key.
    """

    max_length: int = 32
    prompt: str = "{}"

    def prepare(self, texts: Sequence[str]) -> list[str]:
        """The texts as the encoder reads them: each put into ``prompt``."""
        if self.prompt == "{}":
            return list(texts)
        return [self.prompt.replace("{}", t) for t in texts]

    @property
    def cache_config(self) -> str:
        base = super().cache_config
        return base if self.prompt == "{}" else f"{base}|prompt={self.prompt}"

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def forward(self, **batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def pooled(self, texts: Sequence[str]) -> torch.Tensor:
        """One vector per text: masked mean of the word tokens (``(B, C)``)."""
        tokens, mask = self(**self.tokenize(self.prepare(texts)))
        return masked_mean(tokens, mask)


def images_to_pixels(
    images: Sequence[Image.Image],
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    resample: int = Image.Resampling.BICUBIC,
) -> torch.Tensor:
    """RGB (alpha over white, 16-bit rescaled), white-pad to square, resize to ``size``, scale
    to [0, 1], normalise: ``(B, 3, S, S)``. Dataset images arrive as RGB already; the
    conversion is for PIL images handed to ``encode_images`` directly."""
    if len(images) == 0:
        return torch.zeros(0, 3, size, size)
    m = np.asarray(mean, dtype=np.float32).reshape(1, 1, 3)
    s = np.asarray(std, dtype=np.float32).reshape(1, 1, 3)
    out = np.empty((len(images), 3, size, size), dtype=np.float32)
    for i, img in enumerate(images):
        sq = pad_to_square(to_rgb(img))
        if sq.size != (size, size):
            sq = sq.resize((size, size), resample=resample)
        arr = np.asarray(sq, dtype=np.float32) / 255.0
        out[i] = ((arr - m) / s).transpose(2, 0, 1)
    return torch.from_numpy(out)


def ensure_nonempty(mask: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    """Rows of ``mask`` with no valid token fall back to ``fallback`` (e.g. the [CLS] position).

    An empty caption would otherwise have zero valid tokens and break pooling and attention
    downstream; every row keeps at least one token.
    """
    empty = ~mask.any(dim=1)
    if empty.any():
        mask = mask.clone()
        mask[empty] = fallback[empty]
    return mask
