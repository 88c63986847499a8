"""What ``PicoAligner.encode_images`` / ``encode_texts`` accept, checked with the item named:
the tokenizer's and Pillow's own messages name no item, and a wrong batch size returned
nothing at all."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image


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
