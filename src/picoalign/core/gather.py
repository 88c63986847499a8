"""The gather hook that makes PICO's statistics global under torch.distributed.

Why its own module: PICO (``core.pico``) takes any ``gather`` callable and knows nothing of
process groups; this is the one it is given under DDP, and users' own DDP loops pass it too
(README, "PICO in your own model").
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["ddp_all_gather"]


def ddp_all_gather(x: Tensor) -> Tensor:
    """All-gather along dim 0 across torch.distributed ranks (no gradient): the ``gather``
    hook for PICO under DDP, so every rank computes identical statistics and p.

    Ranks may hold different numbers of rows (a last, short batch) and token tensors of
    different widths (captions padded per rank): both are padded with zeros (False in a
    mask) for the collective, and each rank's rows cut back after."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    world = dist.get_world_size()
    shape = torch.tensor([x.shape[0], x.shape[1] if x.dim() > 1 else 0], device=x.device)
    shapes = [torch.empty_like(shape) for _ in range(world)]
    dist.all_gather(shapes, shape)
    rows, width = [int(s[0]) for s in shapes], max(int(s[1]) for s in shapes)
    y = x.detach()
    if x.dim() > 1 and width > y.shape[1]:
        y = torch.cat([y, y.new_zeros(y.shape[0], width - y.shape[1], *y.shape[2:])], dim=1)
    y = torch.cat([y, y.new_zeros(max(rows) - y.shape[0], *y.shape[1:])])
    parts = [torch.empty_like(y) for _ in range(world)]
    dist.all_gather(parts, y.contiguous())
    return torch.cat([part[:n] for part, n in zip(parts, rows, strict=True)])
