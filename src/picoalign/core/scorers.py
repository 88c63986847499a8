"""Scorers: what set of tokens of a sample is scored, registered by name (like timm's models).

Every scorer is one small class that *reduces* a sample's embedded tokens (N, T, D) to the
token set it scores, and the score is always the max-mean of METHOD.md §2 over those sets
(times the scorer's ``scale``). Why one score for all: PICO's column weighting, its sign
statistics (§4), the prototype bank (§5) and reading B (§6b) are defined on token pairs, so a
pooled scorer that reduces each sample to *one* token gets all of PICO for free —

    one token each:  max-mean = s + s = 2 Σ_d p_d v̄_d t̄_d ,   ``scale`` = ½ → the cosine

and the sign statistic of its positives is the share of matched pairs with v̄_d t̄_d > 0,
exactly the pooled reading of the PICO-on-every-scorer issue. There is then one scoring
dispatch (``PicoAligner``), not one per scorer.

- ``fine_grained``: every patch and word (LAPS' max-mean); ``scale`` 1.
- ``global``: the masked mean of the tokens, L2-normalised (the global baseline).
- ``gpo``: VSE∞'s generalized pooling operator (Chen et al., CVPR 2021), learnt.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor, nn

from picoalign.core.similarity import l2_normalize, pool_tokens

SCORERS: dict[str, type[Scorer]] = {}


def register_scorer(cls: type[Scorer]) -> type[Scorer]:
    """Class decorator: make a scorer available by its ``name`` (``--scorer NAME``)."""
    if cls.name in SCORERS:
        raise ValueError(f"scorer {cls.name!r} is registered twice")
    SCORERS[cls.name] = cls
    return cls


def list_scorers() -> list[str]:
    return sorted(SCORERS)


def create_scorer(name: str, dim: int) -> Scorer:
    """The scorer ``name`` for D = ``dim`` embeddings; a typo names the choices."""
    if name not in SCORERS:
        raise ValueError(f"unknown scorer {name!r}; choose one of {list_scorers()}")
    return SCORERS[name](dim)


class Scorer(nn.Module):
    """Reduces embedded tokens to the scored token set. Subclasses set ``name``, ``pooled``
    and ``scale`` and implement :meth:`reduce`; parameters (GPO's) are trained and saved with
    the model."""

    name: ClassVar[str]
    pooled: ClassVar[bool]  # one token per sample (scores are cosines, indexable by faiss)
    scale: ClassVar[float]  # multiplies the max-mean so pooled scores are cosines

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def reduce(self, tokens: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def forward(self, tokens: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        return self.reduce(tokens, mask)


@register_scorer
class FineGrained(Scorer):
    """Every patch and every word: the tokens as they are."""

    name, pooled, scale = "fine_grained", False, 1.0

    def reduce(self, tokens: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        return tokens, mask


def _one_token(vectors: Tensor) -> tuple[Tensor, Tensor]:
    return vectors.unsqueeze(1), torch.ones(
        vectors.shape[0], 1, dtype=torch.bool, device=vectors.device
    )


@register_scorer
class GlobalPool(Scorer):
    """The mean of the real tokens, L2-normalised: one token per sample."""

    name, pooled, scale = "global", True, 0.5

    def reduce(self, tokens: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        return _one_token(pool_tokens(tokens, mask))


@register_scorer
class GPO(Scorer):
    """Generalized pooling (VSE∞): per column, sort the sample's token values in descending
    order and take Σ_k θ_k · value_k, with weights θ over the ranks k generated from the
    positions and the number of tokens n by a small bidirectional GRU over sinusoidal codes.

    It can learn anything between max-pooling (θ on k = 1) and mean-pooling (θ uniform), per
    sequence length — which is why VSE∞ found it the strongest simple pooling. The output
    layer starts at zero, so training starts from mean pooling (the ``global`` scorer).
    """

    name, pooled, scale = "gpo", True, 0.5
    pe_dim, hidden, temperature = 32, 32, 0.1

    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        self.gru = nn.GRU(self.pe_dim, self.hidden, batch_first=True, bidirectional=True)
        self.out = nn.Linear(2 * self.hidden, 1, bias=False)
        nn.init.zeros_(self.out.weight)

    def _codes(self, n: int, device: torch.device) -> Tensor:
        """Sinusoidal position codes (n, pe_dim), as in the Transformer, computed in fp32 and
        given in the GRU's dtype (a bf16, fp16 or fp64 model's GRU refuses fp32 input)."""
        pos = torch.arange(n, dtype=torch.float32, device=device).unsqueeze(1)
        freq = torch.exp(
            torch.arange(0, self.pe_dim, 2, dtype=torch.float32, device=device)
            * (-math.log(10000.0) / self.pe_dim)
        )
        pe = torch.zeros(n, self.pe_dim, device=device)
        pe[:, 0::2], pe[:, 1::2] = torch.sin(pos * freq), torch.cos(pos * freq)
        return pe.to(self.out.weight.dtype)

    def rank_weights(self, lengths: Tensor, width: int) -> Tensor:
        """θ (N, width): softmax over the first ``lengths[i]`` ranks, zero beyond.

        The GRU runs once per distinct length (a batch has few), all lengths in one packed
        call, so the cost does not grow with the batch. That needs the lengths on the host;
        on an accelerator, where reading them is a device sync every step, every length
        1..width is computed instead (:meth:`_all_lengths_rank_weights`).
        """
        device = lengths.device
        if device.type != "cpu":
            return self._all_lengths_rank_weights(width, device).index_select(0, lengths - 1)
        distinct, which = torch.unique(lengths, return_inverse=True)
        codes = self._codes(width, device).expand(len(distinct), width, self.pe_dim)
        packed = nn.utils.rnn.pack_padded_sequence(
            codes, distinct.cpu(), batch_first=True, enforce_sorted=False
        )
        hidden, _ = self.gru(packed)
        hidden, _ = nn.utils.rnn.pad_packed_sequence(hidden, batch_first=True, total_length=width)
        logits = self.out(hidden).squeeze(-1) / self.temperature  # (U, width)
        valid = torch.arange(width, device=device).unsqueeze(0) < distinct.unsqueeze(1)
        theta = logits.masked_fill(~valid, float("-inf")).softmax(dim=1)
        return theta[which]

    def _all_lengths_rank_weights(self, width: int, device: torch.device) -> Tensor:
        """θ (width, width): row L − 1 for sequences of L tokens, without packing.

        The position codes are the same for every sample, so the forward direction at
        position i does not depend on L: one right-padded run gives it for all L. The backward
        direction of length L starts at position L − 1: left-padding sequence L (its codes at
        width − L … width − 1) makes the unpacked backward run start there. No lengths are
        read on the host, so nothing syncs (and the meta-device tests can run it).
        """
        codes = self._codes(width, device)
        pos = torch.arange(width, device=device)
        length = pos.unsqueeze(1) + 1  # (width, 1): row r holds sequences of r + 1 tokens
        shift = (pos.unsqueeze(0) - (width - length)) % width  # left-padded row r
        left = codes.index_select(0, shift.reshape(-1)).view(width, width, self.pe_dim)
        fwd, _ = self.gru(codes.unsqueeze(0))  # (1, width, 2h): forward half valid
        bwd, _ = self.gru(left)  # (width, width, 2h): backward half valid at the tail
        back = (pos.unsqueeze(0) + (width - length)).clamp_max(width - 1)  # position i → tail
        index = back.unsqueeze(-1).expand(-1, -1, self.hidden)
        bwd = torch.gather(bwd[..., self.hidden :], 1, index)
        hidden = torch.cat((fwd[..., : self.hidden].expand(width, -1, -1), bwd), dim=-1)
        logits = self.out(hidden).squeeze(-1) / self.temperature
        valid = pos.unsqueeze(0) < length
        return logits.masked_fill(~valid, float("-inf")).softmax(dim=1)

    def reduce(self, tokens: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        width = tokens.shape[1]
        lengths = mask.sum(dim=1)
        ranked = tokens.masked_fill(~mask.unsqueeze(-1), float("-inf"))
        ranked = ranked.sort(dim=1, descending=True).values  # padding sorts last
        real = torch.arange(width, device=tokens.device).unsqueeze(0) < lengths.unsqueeze(1)
        ranked = ranked.masked_fill(~real.unsqueeze(-1), 0.0)
        theta = self.rank_weights(lengths, width).to(tokens.dtype)
        return _one_token(l2_normalize((theta.unsqueeze(-1) * ranked).sum(dim=1)))
