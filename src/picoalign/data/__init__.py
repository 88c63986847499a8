"""Datasets of images with captions: the data model, safe image loading, built-in offline
datasets, the field's file formats, and the one CLI spelling (``load_dataset("jsonl:x")``).

Importing this package is cheap: emoji, cairosvg and safetensors are imported only when a
dataset that needs them is built.
"""

from picoalign.data.base import (
    SPLITS,
    DataError,
    DataProblems,
    ImageCaptionDataset,
    ImageFeatures,
    Item,
    items_fingerprint,
    seeded_split,
)
from picoalign.data.builtin import (
    cross_style,
    noto_emoji,
    noto_installed,
    tuxpaint,
    tuxpaint_installed,
    twemoji,
    twemoji_installed,
)
from picoalign.data.folder import image_folder
from picoalign.data.formats import jsonl, karpathy, laps, precomp
from picoalign.data.images import load_image, to_rgb, to_square
from picoalign.data.precomp import PrecompFeatures
from picoalign.data.spec import REGISTRY, DatasetEntry, list_datasets, load_dataset, parse_spec

__all__ = [
    "REGISTRY",
    "SPLITS",
    "DataError",
    "DataProblems",
    "DatasetEntry",
    "ImageCaptionDataset",
    "ImageFeatures",
    "Item",
    "PrecompFeatures",
    "cross_style",
    "image_folder",
    "items_fingerprint",
    "jsonl",
    "karpathy",
    "laps",
    "list_datasets",
    "load_dataset",
    "load_image",
    "noto_emoji",
    "noto_installed",
    "parse_spec",
    "precomp",
    "seeded_split",
    "to_rgb",
    "to_square",
    "tuxpaint",
    "tuxpaint_installed",
    "twemoji",
    "twemoji_installed",
]
