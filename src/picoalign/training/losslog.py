"""The epoch's running loss, read from the device in batches: the NaN check and the logged
per-pair loss without a host sync every step."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor

from picoalign.config import TrainConfig
from picoalign.core.losses import TripletLoss
from picoalign.training.distributed import DistContext

LOSS_CHECK_EVERY = 25
"""Steps between reads of the loss on the host (the NaN check, the running mean): reading a
CUDA scalar waits for the GPU, so doing it every step would serialise the host and the
device. A non-finite loss is still reported with its exact step; nothing is saved between
the bad step and the check (checkpoints check first)."""


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the last good checkpoint is kept."""


class LossLog:
    """The epoch's running loss, with the per-step values kept on the device until
    :meth:`settle` reads them all in one sync (same float arithmetic as reading each)."""

    def __init__(self, total: float, count: int, epoch: int, last: Path | None) -> None:
        self.total, self.count, self.epoch, self.last = total, count, epoch, last
        self.pending: list[tuple[int, Tensor, int]] = []

    def add(self, step: int, loss: Tensor, n: int) -> None:
        self.pending.append((step, loss, n))

    def settle(self) -> None:
        """Read the pending losses; raise :class:`TrainingError` at the first non-finite."""
        if not self.pending:
            return
        values = torch.stack([loss for _, loss, _ in self.pending]).tolist()
        for (step, _, n), value in zip(self.pending, values, strict=True):
            if not math.isfinite(value):
                raise TrainingError(
                    f"non-finite loss ({value}) at epoch {self.epoch + 1}, step {step + 1}"
                    f"{checkpoint_note(self.last)}. Try a lower --lr or check the input "
                    "features for NaN."
                )
            self.total += value * n
            self.count += n
        self.pending.clear()

    @property
    def mean(self) -> float:
        return self.total / max(self.count, 1)


def checkpoint_note(last: Path | None) -> str:
    """What a run stopped by a non-finite value keeps: its last checkpoint, or none. Said as
    it is when the error is raised: a new run has none yet (an ``--overwrite``'s old run is
    aside, and comes back), and naming ``RUN/last`` sent the user to a folder not there."""
    if last is None:
        return ""
    if last.is_dir():
        return f"; the last good checkpoint is kept in {last}"
    return "; no checkpoint of this run was written before it"


def per_pair(
    loss: Tensor, loss_fn: torch.nn.Module, pairs: int, ctx: DistContext, cfg: TrainConfig
) -> Tensor:
    """The batch loss per pair, for logging only: the triplet loss is a sum over the batch
    (its margin's scale), so its logged value would grow with the batch size; InfoNCE is
    already a mean. The optimised loss is unchanged. Stays on the device (no sync)."""
    value = loss.detach()
    if not isinstance(loss_fn, TripletLoss):
        return value
    if ctx.enabled and not cfg.gather_negatives:  # mean over ranks of per-shard sums
        return value * ctx.world_size / pairs
    return value / pairs
