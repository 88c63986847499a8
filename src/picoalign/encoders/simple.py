"""Download-free encoders: ``random-conv`` / ``hash-text`` for tests and smoke runs, and
``precomputed`` for token features that already exist on disk.

``random-conv`` and ``hash-text`` are seeded random networks: deterministic across runs and
machines, instantaneous, and trainable (gradients flow), so the whole pipeline (cache,
training, evaluation, CLI) can be exercised in seconds. Their features carry no pretrained
knowledge: never report numbers made with them.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .base import ImageEncoder, TextEncoder
from .glove import simple_tokenize
from .registry import register_image_encoder, register_text_encoder


def _seeded_init(module: nn.Module, seed: int, scale: float = 1.0) -> None:
    """Re-initialise every parameter from a private generator (independent of torch's RNG)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            fan_in = p[0].numel() if p.dim() > 1 else p.numel()
            p.copy_(torch.randn(p.shape, generator=gen) * scale / fan_in**0.5)


@register_image_encoder("random-conv")
class RandomConvEncoder(ImageEncoder):
    """Seeded patch-conv + ReLU + 1x1 conv: ``(B, (size/patch)^2, dim)`` tokens. Tests only."""

    def __init__(self, *, dim: int = 32, image_size: int = 32, patch: int = 8, seed: int = 0):
        super().__init__()
        if image_size % patch:
            raise ValueError(f"image_size {image_size} must be a multiple of patch {patch}")
        self.name = "random-conv"
        self.dim = dim
        self.image_size = image_size
        self.mean, self.std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
        self.net = nn.Sequential(
            nn.Conv2d(3, dim, kernel_size=patch, stride=patch), nn.ReLU(), nn.Conv2d(dim, dim, 1)
        )
        _seeded_init(self.net, seed)

    @property
    def settings(self) -> str:
        return f"{self.name}|{self.preprocessing}|dim={self.dim}"

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.net(pixels.to(self.device)).flatten(2).transpose(1, 2)
        return tokens, torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)


@register_text_encoder("hash-text")
class HashTextEncoder(TextEncoder):
    """Words hashed (CRC32, stable across processes) into a seeded embedding table. Tests only."""

    def __init__(
        self, *, dim: int = 32, buckets: int = 4096, max_length: int = 32, seed: int = 0
    ) -> None:
        super().__init__()
        self.name = "hash-text"
        self.dim = dim
        self.buckets = buckets
        self.max_length = max_length
        self.embed = nn.Embedding(buckets + 1, dim, padding_idx=buckets)  # last row = padding
        _seeded_init(self.embed, seed, scale=float(dim) ** 0.5)

    @property
    def settings(self) -> str:
        return f"{self.name}|max_length={self.max_length}|dim={self.dim}"

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        rows = [
            [zlib.crc32(w.encode()) % self.buckets for w in simple_tokenize(t)][: self.max_length]
            for t in texts
        ]
        width = max((len(r) for r in rows), default=0) or 1
        ids = torch.full((len(rows), width), self.buckets, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        return {"input_ids": ids}

    def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ids = input_ids.to(self.device)
        mask = ids != self.buckets
        mask[:, 0] |= ~mask.any(dim=1)  # empty caption: keep one (padding) token
        return self.embed(ids), mask


@register_image_encoder("precomputed")
class PrecomputedEncoder(ImageEncoder):
    """Identity encoder for image features computed elsewhere (e.g. SCAN/VSE bottom-up regions).

    With a precomputed-feature dataset (``dataset.features`` set, see ``picoalign.data.precomp``)
    :func:`picoalign.features.encode.encode_dataset` passes each batch of
    ``dataset.image_features(keys)`` through :meth:`from_features`. ``preprocess`` also accepts
    a list of ``(T, C)`` / ``(C,)`` arrays, zero-padded; without a mask, all-zero token rows are
    padding. The features already live on disk, so they are not cached again
    (``cacheable = False``). ``dim`` is taken from the first batch when not given.
    """

    cacheable = False
    version_packages = ("numpy",)

    def __init__(self, *, dim: int | None = None) -> None:
        super().__init__()
        self.name = "precomputed"
        self.dim = int(dim or 0)

    def _check_dim(self, c: int) -> None:
        if not self.dim:
            self.dim = int(c)
        elif c != self.dim:
            raise ValueError(f"precomputed features have {c} channels, expected {self.dim}")

    def from_features(
        self, tokens: Any, mask: Any | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, T, C)`` (or ``(B, C)``) arrays and an optional ``(B, T)`` mask, as tensors."""
        tok = torch.as_tensor(np.asarray(tokens), dtype=torch.float32)
        tok = tok.unsqueeze(1) if tok.dim() == 2 else tok
        self._check_dim(tok.shape[-1])
        if mask is None:
            return self(tok)
        return tok, torch.as_tensor(np.asarray(mask)).bool()

    def preprocess(self, images: Sequence[Any]) -> torch.Tensor:
        arrays = [torch.as_tensor(np.asarray(a), dtype=torch.float32) for a in images]
        arrays = [a.unsqueeze(0) if a.dim() == 1 else a for a in arrays]
        for a in arrays:
            if a.dim() != 2:
                raise ValueError(f"precomputed features must be (T, C), got {tuple(a.shape)}")
            self._check_dim(a.shape[1])
        width = max((a.shape[0] for a in arrays), default=1)
        out = torch.zeros(len(arrays), width, self.dim)
        for i, a in enumerate(arrays):
            out[i, : a.shape[0]] = a
        return out

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = pixels.float()
        tokens = tokens.unsqueeze(1) if tokens.dim() == 2 else tokens
        return tokens, tokens.ne(0).any(dim=-1)
