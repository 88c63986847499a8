"""The training schedule: which captions each step sees and the learning rate of each epoch,
pure functions of the config, so a resumed run replays exactly what an uninterrupted one does."""

from __future__ import annotations

import torch
from torch import Tensor

from picoalign.config import TrainConfig


def batch_order(n: int, batch_size: int, seed: int, epoch: int) -> list[Tensor]:
    """Shuffled caption indices for one epoch, a pure function of (seed, epoch)."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    perm = torch.randperm(n, generator=g)
    return [
        perm[i : i + batch_size]
        for i in range(0, n, batch_size)
        if len(perm[i : i + batch_size]) >= 2
    ]


def learning_rate(cfg: TrainConfig, epoch: int) -> float:
    """The learning rate of 0-based ``epoch``: step decays at ``cfg.lr_step_epochs()``."""
    return cfg.lr * cfg.lr_gamma ** sum(epoch >= s for s in cfg.lr_step_epochs())
