"""The training schedule: which captions each step sees and the learning rate of each epoch,
pure functions of the config, so a resumed run replays exactly what an uninterrupted one does."""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from picoalign.config import TrainConfig

# epochs="auto": about this many passes over each image's captions, at most MAX_AUTO_EPOCHS
# epochs. Two measured points fix it (docs/results.md, "The training budget"): with one
# caption per image every family levels off by 20 epochs; with five (scenes) every family's
# validation rSum peaks at epochs 4–11 and 6 epochs beat 20 for every method.
CAPTION_PASSES = 30
MAX_AUTO_EPOCHS = 20


def auto_epochs(n_images: int, n_captions: int) -> int:
    """The budget ``epochs="auto"`` gives a train split of ``n_images`` with ``n_captions``:
    20 epochs at one caption per image, 6 at five, in between ≈ 30 / captions per image.

    Why captions per image: an epoch visits every caption, so with five captions an image
    is seen five times per epoch and a small set overfits in a fifth of the epochs. Measured
    only on sets of ≤ 1,400 images: give ``epochs`` for larger data.
    """
    if n_images < 1 or n_captions < 1:
        raise ValueError(f"auto_epochs: need images and captions, got {n_images}, {n_captions}")
    return min(MAX_AUTO_EPOCHS, max(1, round(CAPTION_PASSES * n_images / n_captions)))


def resolve_epochs(cfg: TrainConfig, n_images: int, n_captions: int) -> TrainConfig:
    """``cfg`` with ``epochs="auto"`` replaced by :func:`auto_epochs` (a copy; an integer
    ``epochs`` is returned unchanged), so that a run's config.yaml says what it trained."""
    if cfg.epochs != "auto":
        return cfg
    return replace(cfg, epochs=auto_epochs(n_images, n_captions))


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


def continue_schedule(saved: TrainConfig, new: TrainConfig, start: int) -> TrainConfig:
    """The config a run resumed with another number of epochs trains on, where the 0-based
    epochs before ``start`` have trained (the epoch a resume starts inside of counts: its lr
    has been used): the lr steps it has trained past stay at their epochs, the others follow
    the new length (not before ``start``). Written as epochs, so config.yaml says what ran.

    Why: ``lr_steps`` are fractions of training, so a longer ``epochs`` moves every step,
    those already applied too: a finished 2-epoch run resumed to 5 went back to the full lr
    at epoch 3, and trained a schedule no run from the start would. Such a resume is still
    not the same as a run of the new length from the start: its schedule says where.
    """
    if new.epochs == saved.epochs:
        return new
    old, fresh = saved.lr_step_epochs(), new.lr_step_epochs()
    if len(old) != len(fresh):  # another schedule altogether: what the caller asked for
        return new
    steps = [o if o < start else max(start, f) for o, f in zip(old, fresh, strict=True)]
    return new if steps == fresh else replace(new, lr_steps=steps)
