"""A tiny drawn dataset, no files, for the encoder and feature-cache tests (their conftests
re-export its fixtures)."""

from __future__ import annotations

import os

import pytest
from PIL import Image, ImageDraw

from picoalign.data.base import ImageCaptionDataset, Item

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach the hub from these tests
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

COLORS = ["red", "green", "blue", "yellow", "purple", "orange"]
SHAPES = ["circle", "square"]


def draw(item: Item) -> Image.Image:
    """A coloured shape on a non-square canvas (exercises pad-to-square)."""
    color, shape = item.group.split("-")
    img = Image.new("RGB", (48, 40), "white")
    d = ImageDraw.Draw(img)
    box = (8, 6, 40, 34)
    (d.ellipse if shape == "circle" else d.rectangle)(box, fill=color)
    return img


def make_dataset(n: int = 7, name: str = "toy") -> ImageCaptionDataset:
    items = []
    for i in range(n):
        color, shape = COLORS[i % len(COLORS)], SHAPES[i % len(SHAPES)]
        caps = tuple(f"a {color} {shape}" + " on a white background" * j for j in range(1 + i % 3))
        split = ("train", "val", "test")[i % 3]
        items.append(Item(f"k{i}", caps, split, f"{color}-{shape}"))
    return ImageCaptionDataset(name, items, draw, fingerprint=f"fp{n}")


@pytest.fixture
def toy_dataset() -> ImageCaptionDataset:
    return make_dataset()


@pytest.fixture
def make_toy():
    """The dataset factory itself (tests import no helpers from conftest)."""
    return make_dataset
