"""The data model every loader produces and every consumer (encoders, training, evaluation) reads.

A dataset is a list of *items*: one image with any number of captions. Items carry a
``group`` (the concept they show) so that splits are made by concept: two images of the same
concept never end up on both sides of a train/test boundary.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

SPLITS = ("train", "val", "test")


class DataError(ValueError):
    """Bad input data. The message names the file (and line) and what was expected."""


SKIP_HINT = "--skip-bad"


# what makes one problem's message differ from another of its kind: quoted names, paths,
# numbers (``image file not found: /a/1.png`` and ``…/2.png`` are one kind)
_PARTICULARS = re.compile(r"'[^']*'|\"[^\"]*\"|\S*[/\\]\S*|\d+")


class DataProblems(DataError):
    """Every bad entry of a dataset at once, found before any work.

    Why all at once: fixing a 100k-line scrape one error per run is hours of reruns. The
    first line of the message is a complete one-line summary (file, line, why, count, and
    the ``--skip-bad`` hint, what the CLI prints); each problem follows on its own line.
    ``partial`` is the dataset of the good entries, so that a later check (image headers)
    can add its problems to the same report.
    """

    def __init__(
        self, problems: Sequence[tuple[str, str]], partial: ImageCaptionDataset | None = None
    ) -> None:
        if not problems:
            raise ValueError("DataProblems needs at least one problem")
        self.problems = list(problems)
        self.partial = partial
        super().__init__("\n".join([self.summary(), *(f"  {w}: {y}" for w, y in self.problems)]))

    def listing(self, first: int = 20) -> list[str]:
        """The problems one per line, for a terminal: the first ``first`` in full, then the
        rest counted by what is wrong (a gallery of 3,000 lines without captions printed
        3,000 lines of the same message)."""
        lines = [f"  {w}: {y}" for w, y in self.problems[:first]]
        kinds: dict[str, list] = {}  # kind of problem -> [count, first example]
        for where, why in self.problems[first:]:
            kind = kinds.setdefault(_PARTICULARS.sub("_", why), [0, f"{where}: {why}"])
            kind[0] += 1
        common = sorted(kinds.values(), key=lambda k: -k[0])
        for n, example in common[:5]:
            lines.append(f"  ... and {n} more like {example}")
        others = sum(n for n, _ in common[5:])
        if others:
            lines.append(f"  ... and {others} more of other kinds")
        return lines

    def summary(self) -> str:
        where, why = self.problems[0]
        if len(self.problems) == 1:
            return f"{where}: {why} (1 bad entry; fix it, or pass {SKIP_HINT} to drop it)"
        return (
            f"{len(self.problems)} bad entries, first {where}: {why} (listed above); "
            f"fix them, or pass {SKIP_HINT} to drop and list them"
        )


@dataclass(frozen=True)
class Item:
    """One image and its captions.

    ``key`` is unique and stable within its dataset (it keys the feature cache);
    ``source`` is a path for file-backed data, or an opaque string for rendered data.
    """

    key: str
    captions: tuple[str, ...]
    split: str
    group: str
    source: str = ""


class ImageFeatures(Protocol):
    """Precomputed image token features, fetched by item key (see ``formats.precomp``).

    Returns ``(tokens, mask)``: float32 ``B x T x C`` and bool ``B x T`` (``True`` = real token),
    rows in the order of ``keys``.
    """

    def __call__(self, keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass
class ImageCaptionDataset:
    """A named list of items plus a way to load each item's image as RGB.

    ``load`` turns an item into a PIL RGB image; file-backed loaders use
    :func:`picoalign.data.images.load_image`, rendered ones draw it.
    ``fingerprint`` changes whenever the content would (it keys caches).
    """

    name: str
    items: list[Item]
    load: Callable[[Item], Image.Image]
    fingerprint: str
    root: Path | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (where, why) under skip_bad
    # What was done to the data on the way in (val carved from train, entries dropped): copied
    # into the FeatureSet's meta, hence into the run folder, so a run says what it trained on.
    notes: dict[str, Any] = field(default_factory=dict)
    # Set only for precomputed-feature datasets (``precomp:DIR``): their items have no image.
    features: ImageFeatures | None = None

    def split(self, split: str) -> ImageCaptionDataset:
        """The sub-dataset of one split (``train``, ``val`` or ``test``)."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        items = [it for it in self.items if it.split == split]
        # ``replace`` keeps every other field (``features``, ``root``) so views stay usable.
        return replace(
            self,
            name=f"{self.name}/{split}",
            items=items,
            fingerprint=digest(self.fingerprint, split),
            skipped=[],
        )

    def image_features(self, keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Precomputed ``(tokens, mask)`` for ``keys``; DataError if this dataset has images."""
        if self.features is None:
            raise DataError(f"dataset {self.name!r} has images, not precomputed features")
        return self.features(keys)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def n_captions(self) -> int:
        return sum(len(it.captions) for it in self.items)


def digest(*parts: str) -> str:
    """Short stable hash of strings (cache keys, fingerprints)."""
    h = hashlib.sha1()
    for p in parts:
        h.update(p.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()[:16]


def items_fingerprint(*parts: str, items: Iterable[Item] = ()) -> str:
    """A digest of ``parts`` and every item's key, captions, split and group: a cache keyed
    by it is invalidated whenever a loader would produce different content."""
    h = hashlib.sha1()
    for p in parts:
        h.update(p.encode("utf-8"))
        h.update(b"\0")
    for it in items:
        for p in (it.key, it.split, it.group, *it.captions):
            h.update(p.encode("utf-8"))
            h.update(b"\1")
        h.update(b"\2")
    return h.hexdigest()[:16]


def group_unit(group: str, seed: int = 0) -> float:
    """A seeded hash of ``group`` mapped to [0, 1): the coin behind :func:`seeded_split`."""
    return int(hashlib.sha1(f"{seed}:{group}".encode()).hexdigest()[:12], 16) / float(1 << 48)


def seeded_split(group: str, seed: int = 0, fractions: tuple[float, float] = (0.7, 0.1)) -> str:
    """Assign a group to train/val/test by a seeded hash: stable across runs, machines and
    datasets (so Twemoji and Noto put the same concept in the same split)."""
    u = group_unit(group, seed)
    if u < fractions[0]:
        return "train"
    if u < fractions[0] + fractions[1]:
        return "val"
    return "test"
