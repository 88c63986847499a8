"""What ``PicoAligner.encode_images`` / ``encode_texts`` accept, checked with the item named:
the tokenizer's and Pillow's own messages name no item, and a wrong batch size returned
nothing at all. And the statistics of the inputs that ``standardize`` divides out
(:func:`channel_stats`)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor


def sliceable(items: Any) -> Any:
    """A sequence as given (a lazy one stays lazy); any other iterable, such as a generator,
    as a list: the encoders read in slices."""
    return items if hasattr(items, "__len__") and hasattr(items, "__getitem__") else list(items)


def check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")


def as_image(x: Any, i: int) -> Image.Image:
    """Item ``i`` of ``encode_images`` as a PIL image: a PIL image, or an image file's path;
    anything else is named, not passed on to fail in ``open``."""
    from picoalign.data.images import load_image, upright_image

    if isinstance(x, Image.Image):
        return upright_image(x, f"image {i}")
    if not isinstance(x, (str, Path)):
        raise TypeError(
            f"images must be PIL images or file paths: item {i} is {type(x).__name__} (for "
            "an array, PIL.Image.fromarray(array) first)"
        )
    return load_image(Path(x).expanduser(), where=f"image {i}")


def check_texts(texts: Sequence[Any]) -> None:
    """Every caption a non-empty string (the data check refuses empty captions too)."""
    wrong = [(i, x) for i, x in enumerate(texts) if not isinstance(x, str)]
    if wrong:
        i, x = wrong[0]
        raise TypeError(f"texts must be strings: item {i} is {type(x).__name__} ({x!r:.40})")
    blank = [i for i, x in enumerate(texts) if not x.strip()]
    if blank:
        raise ValueError(f"texts must not be empty: item {blank[0]} is {texts[blank[0]]!r}")


@torch.no_grad()
def channel_stats(tokens: Tensor, mask: Tensor, chunk: int, side: str) -> tuple[Tensor, Tensor]:
    """Per-channel mean and std (float32) of the real tokens of cached backbone features,
    summed in float64 chunk by chunk (a float16 cache of millions of tokens overflows and
    loses the small channels in one float32 sum)."""
    total = torch.zeros(tokens.shape[-1], dtype=torch.float64)
    sq = torch.zeros_like(total)
    n = 0
    for i in range(0, len(tokens), chunk):
        x = tokens[i : i + chunk][mask[i : i + chunk]].double()
        total += x.sum(0)
        sq += (x * x).sum(0)
        n += len(x)
    if n < 2:
        raise ValueError(f"standardize: the training split has {n} {side} tokens")
    mean = total / n
    std = (sq / n - mean * mean).clamp_min(0).sqrt().clamp_min(1e-6)
    return mean.float(), std.float()


@contextmanager
def eval_mode(module: torch.nn.Module) -> Iterator[None]:
    """Eval mode for the block, the caller's mode after it: how ``encode_*``, evaluation and
    index building embed, also for a model in training mode (a fresh one, or ``train()``'s),
    where token dropout drew other embeddings on every call."""
    was = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was)
