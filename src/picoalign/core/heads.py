"""Projection heads: one per modality, mapping backbone tokens (C) into the shared space (D).

A registry (``HEADS``) rather than an if-chain, so that a config names a head by string and a
new head is one class and one entry.
"""

from __future__ import annotations

from torch import Tensor, nn


class LinearHead(nn.Module):
    """Token-wise linear projection C → D."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


class MLPHead(nn.Module):
    """Linear projection plus a residual two-layer MLP: enough capacity to re-mix columns,
    which matters because PICO weights columns of the projected space."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, out_dim)
        self.mlp = nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.zeros_(self.mlp[2].bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x) + self.mlp(x)


HEADS: dict[str, type[nn.Module]] = {"linear": LinearHead, "mlp": MLPHead}
