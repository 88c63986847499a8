"""Line-oriented reading shared by the file formats: exact line numbers in every message,
strict UTF-8 (a wrong encoding is reported, not silently turned into mojibake captions), and
one place that decides between "raise" and "skip and record" (``skip_bad``).

Bad records are always collected, never raised one by one: a file with five bad lines reports
all five in one :class:`DataProblems` (``Problems.finish``), so one rerun fixes them all."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from picoalign.data.base import DataError, DataProblems, ImageCaptionDataset

# Canonical split -> file prefixes, first found wins. ``dev`` is the VSE/SCAN name for val;
# COCO's ``testall`` (5K) contains ``test`` (1K), so reading both would duplicate images.
SPLIT_PREFIXES: dict[str, tuple[str, ...]] = {
    "train": ("train",),
    "val": ("dev", "val"),
    "test": ("testall", "test"),
}


class RepeatedKey(ValueError):
    """A JSON object names one key twice. ``json`` keeps the last value without a word, so
    ``"split": "train", "split": "test"`` put a training image into the test set."""


def _no_repeated_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise RepeatedKey(f'key "{key}" given twice in one object')
        seen[key] = value
    return seen


def loads_json(text: str) -> Any:
    """``json.loads`` that refuses an object with a repeated key (:class:`RepeatedKey`,
    naming it): the data formats read their JSON through it."""
    return json.loads(text, object_pairs_hook=_no_repeated_keys)


class Problems:
    """Collects bad records as (where, why); :meth:`finish` raises them all at once unless
    ``skip_bad``, in which case they stay listed in the dataset's ``skipped``."""

    def __init__(self, skip_bad: bool) -> None:
        self.skip_bad = skip_bad
        self.skipped: list[tuple[str, str]] = []

    def add(self, where: str, why: str) -> None:
        self.skipped.append((where, why))

    def finish(self, dataset: ImageCaptionDataset) -> ImageCaptionDataset:
        """``dataset`` (its ``skipped`` set) or, unless ``skip_bad``, DataProblems of all."""
        dataset.skipped = list(self.skipped)
        if self.skipped and not self.skip_bad:
            raise DataProblems(self.skipped, partial=dataset)
        return dataset

    def empty(self, what: str) -> None:
        """Raise for a dataset that ended up with no items, saying why."""
        if self.skipped and not self.skip_bad:
            raise DataProblems(self.skipped)
        msg = f"{what}: no usable items"
        if self.skipped:
            where, why = self.skipped[0]
            msg += f" ({len(self.skipped)} bad records skipped; first: {where}: {why})"
        raise DataError(msg)


def read_lines(
    path: Path, problems: Problems, *, drop_trailing_blank: bool = False
) -> Iterator[tuple[int, str | None]]:
    """``(line number, text)`` for every line; ``text`` is None for a line that is not UTF-8
    (reported to ``problems`` as it is reached, so ``skipped`` stays in line order), so that
    callers aligning lines by index stay aligned."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read file ({e.strerror or e})") from None
    data = data.removeprefix(b"\xef\xbb\xbf")
    raw = data.split(b"\n")
    if raw and raw[-1] == b"":
        raw.pop()  # a final newline ends the last line, it does not start a new one
    if drop_trailing_blank:
        while raw and not raw[-1].strip():
            raw.pop()
    for n, line in enumerate(raw, 1):
        line = line.removesuffix(b"\r")
        try:
            text: str | None = line.decode("utf-8")
        except UnicodeDecodeError as e:
            problems.add(
                f"{path} line {n}",
                f"not valid UTF-8 (byte 0x{line[e.start]:02x} at "
                f"column {e.start + 1}); save the file as UTF-8",
            )
            text = None
        yield n, text


def read_caption_file(path: Path, problems: Problems) -> list[tuple[int, str, str | None]]:
    """``(line, where, caption)`` per line of a one-caption-per-line file; ``caption`` is None
    for a skipped bad line (position kept: captions are matched to images by index)."""
    out: list[tuple[int, str, str | None]] = []
    for n, text in read_lines(path, problems, drop_trailing_blank=True):
        where = f"{path} line {n}"
        if text is not None and not text.strip():
            problems.add(where, "empty caption")
            text = None
        out.append((n, where, " ".join(text.split()) if text is not None else None))
    return out


def find_split_files(data_dir: Path, suffixes: tuple[str, ...]) -> tuple[Path, dict[str, str]]:
    """The folder holding ``{prefix}_caps.txt`` files (``DIR/precomp`` or ``DIR``) and, per
    canonical split, the first prefix that has captions and one of ``suffixes``."""
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: not a directory")
    folder = data_dir / "precomp"
    if not any(folder.glob("*_caps.txt")):
        folder = data_dir
    found: dict[str, str] = {}
    for split, prefixes in SPLIT_PREFIXES.items():
        alone = []  # one file of a pair, its partner missing or misnamed
        for p in prefixes:
            caps = (folder / f"{p}_caps.txt").is_file()
            other = [f"{p}{s}" for s in suffixes if (folder / f"{p}{s}").is_file()]
            if caps and other:
                found[split] = p
                break
            if caps or other:
                alone.append(f"{p}_caps.txt" if caps else other[0])
        if split not in found and alone:
            name = alone[0]
            prefix = next(p for p in prefixes if name.startswith(f"{p}_"))
            partner = (
                " or ".join(f"{prefix}{s}" for s in suffixes)
                if name.endswith("_caps.txt")
                else f"{prefix}_caps.txt"
            )
            raise DataError(
                f"{folder / name}: its partner is missing: no {partner} beside it (each split "
                "needs its captions and its features or ids side by side)"
            )
    if not found:
        want = " or ".join(f"{{split}}{s}" for s in suffixes)
        raise DataError(
            f"{data_dir}: no split files found; expected {{split}}_caps.txt with "
            f"{want} for split in train, dev, test(all) (in DIR or DIR/precomp)"
        )
    return folder, found
