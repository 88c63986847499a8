"""Checks shared by the dataset readers (:mod:`picoalign.data.formats`,
:mod:`picoalign.data.jsonl`): a record's split, an image path inside the dataset root, a cheap
existence check, a list of captions. Each raises :class:`DataError` with what is wrong."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import Any

from picoalign.data.base import SPLITS, DataError

SPLIT_ALIASES = {"dev": "val", "valid": "val", "validation": "val", "restval": "train"}


def split_value(value: Any) -> str:
    """A record's split as train, val or test: any case, surrounding spaces and the field's
    other names (dev, valid, validation; restval joins train) taken; anything else refused
    with every spelling that is accepted."""
    word = value.strip().lower() if isinstance(value, str) else None  # a list: unhashable
    split = SPLIT_ALIASES.get(word, word) if word is not None else None
    if split not in SPLITS:
        raise DataError(
            f"split must be one of {', '.join(SPLITS)} (or {', '.join(SPLIT_ALIASES)}; any "
            f"case), got {value!r}"
        )
    return split


def inside(root: Path, rel: str, what: str = "the image folder") -> tuple[Path, str]:
    """``root/rel`` and its key, refusing relative paths that climb out of ``root``: a dataset
    file must not be able to make the loader read ``../../home/user/.ssh/...``."""
    if "\0" in rel:
        raise DataError(f"image path {rel!r} contains a NUL character")
    if os.path.isabs(rel):
        return Path(rel), rel
    norm = os.path.normpath(rel)
    if norm == ".." or PurePosixPath(norm.replace(os.sep, "/")).parts[:1] == ("..",):
        raise DataError(
            f"image path {rel!r} escapes the dataset root {root} ({what}); "
            "write an absolute path for an image outside it"
        )
    return root / norm, PurePosixPath(norm.replace(os.sep, "/")).as_posix()


# what file_identity holds, recorded with a run's data (training.runs.data_change compares
# the file fingerprints of records that hold the same)
FILE_IDENTITY = "inode:size:mtime_ns"


def file_identity(st: os.stat_result) -> str:
    """What says a file is the one seen before, without reading it: its inode, size and
    modification time. Why the inode: two files of one size and time swapped by renames (an
    unpacked archive gives every file one time) kept the fingerprint, and the cache served
    each the other's features; a rename keeps a file's inode, so the swap shows. Not the
    change time, which a chmod moves, nor the device, which a network mount may renumber."""
    return f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"


def stat_image(path: Path) -> str:
    """A cheap existence check (no decoding); returns the file's identity for the
    fingerprint (:func:`file_identity`)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise DataError(f"image file not found: {path}") from None
    except OSError as e:
        raise DataError(f"cannot access image {path}: {e.strerror or e}") from None
    if not path.is_file():
        raise DataError(f"image path is not a file: {path}")
    return file_identity(st)


def text_list(value: Any, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        got = "an empty list" if value == [] else type(value).__name__
        raise DataError(f"{what} must be a non-empty list of strings (got {got})")
    out = []
    for i, c in enumerate(value):
        if not isinstance(c, str):
            raise DataError(f"{what}[{i}] must be a string (got {type(c).__name__})")
        if not c.strip():
            raise DataError(f"{what}[{i}] is empty")
        out.append(" ".join(c.split()))
    return tuple(out)
