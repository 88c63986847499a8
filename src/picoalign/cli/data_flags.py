"""The data flags shared by ``train``, ``evaluate`` and ``index``, defined once so the three
commands spell and document them identically (``docs/data.md``)."""

from __future__ import annotations

import argparse
from typing import Any


def pixel_count(text: str) -> int:
    """A positive pixel count: ``200000000``, ``2e8`` or ``200M``."""
    raw = text.strip().upper().replace("_", "")
    scale = 1_000_000 if raw.endswith("M") else 1
    try:
        value = float(raw.removesuffix("M")) * scale
    except ValueError:
        value = -1.0
    if not value >= 1 or value != int(value):
        raise argparse.ArgumentTypeError(
            f"expected a positive pixel count (e.g. 200M), got {text!r}"
        )
    return int(value)


def add_data_flags(p: argparse.ArgumentParser, *, skip_bad: bool = True) -> None:
    """``--skip-bad`` (unless the parser has it) and ``--max-image-pixels``; both default to
    None so that ``train`` can tell "not given" from a value (config file precedence)."""
    if skip_bad:
        p.add_argument(
            "--skip-bad",
            action="store_true",
            dest="skip_bad",
            default=None,
            help="drop bad data entries (all listed) instead of stopping",
        )
    p.add_argument(
        "--max-image-pixels",
        type=pixel_count,
        dest="max_image_pixels",
        default=None,
        metavar="N",
        help="refuse images with more pixels (e.g. 300M); default: Pillow's decompression-"
        "bomb limit (179M); large images are decoded downscaled",
    )


def data_kwargs(args: Any) -> dict[str, Any]:
    """The ``dataset_features`` keywords of the data flags."""
    return {
        "skip_bad": bool(getattr(args, "skip_bad", False)),
        "max_image_pixels": getattr(args, "max_image_pixels", None),
    }
