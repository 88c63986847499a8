"""``folder:PATH``: a gallery of image files with no captions, for ``picoalign index``.

Why a format of its own: serving search over one's own pictures is the common case, and it
has no captions to write. Every image file under PATH (sub-folders included, linked ones too,
hidden ones not) is one item, keyed by its path relative to PATH. Files that are not images
by their extension (Pillow's list) are passed over and counted, and so are picoalign's own
outputs: an index, a training run or a demo kept in the gallery, a contact sheet saved there
(:mod:`picoalign.marks`). All items are in the ``test`` split, so ``index --split all`` and
``--split test`` both take the whole gallery. With no captions there is nothing to train or
evaluate on: :func:`picoalign.data.check.prepare_dataset` says so for those commands, and a
caption index has nothing to hold.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from picoalign.data._text import Problems
from picoalign.data.base import DataError, ImageCaptionDataset, Item, items_fingerprint
from picoalign.data.images import FileLoader
from picoalign.data.records import file_identity
from picoalign.marks import holds_demo, holds_index, holds_run, is_sheet

__all__ = ["image_extensions", "image_folder"]


# Pillow registers these, but reads no pixels from them here: PDF and Palm it only writes,
# MPEG it only identifies, PostScript needs Ghostscript; stubs (HDF5, GRIB, WMF …) need a
# handler. A gallery holding a menu.pdf or a clip.mpg passed them over as "not images" only
# after the data check had failed on them (the gallery walkthrough).
_NO_PIXELS = frozenset({"PDF", "PALM", "MPEG", "EPS"})


def image_extensions() -> frozenset[str]:
    """Lower-case file extensions Pillow can decode here (``.png``, ``.jpg``, ``.webp`` …)."""
    from PIL import EpsImagePlugin, Image, ImageFile

    Image.init()
    no_pixels = set(_NO_PIXELS) - ({"EPS"} if EpsImagePlugin.has_ghostscript() else set())
    out = set()
    for ext, fmt in Image.registered_extensions().items():
        opener = Image.OPEN.get(fmt, (None,))[0]
        stub = isinstance(opener, type) and issubclass(opener, ImageFile.StubImageFile)
        if fmt not in no_pixels and not stub and (opener is not None or fmt == "MPO"):
            out.add(ext.lower())  # MPO (multi-picture JPEG) opens through the JPEG reader
    return frozenset(out)


def image_folder(path: Path | str, *, skip_bad: bool = False) -> ImageCaptionDataset:
    """Every image file under ``path`` as a caption-less item (module docstring), in a
    stable order (sorted relative paths), whatever order the file system lists them in.

    A file reached twice (a symlink to an image of the gallery) is one item, under its real
    path where the gallery has it; a file name that is not UTF-8 cannot be recorded, and is
    a problem (listed, or skipped with ``skip_bad``)."""
    root = Path(path).expanduser()
    if not root.exists():
        raise DataError(f"folder:{path}: no such folder")
    if not root.is_dir():
        raise DataError(f"folder:{path}: is a file, not a folder of images")
    exts = image_extensions()
    problems = Problems(skip_bad)
    found: list[tuple[str, Path]] = []
    other = broken = 0
    own: list[str] = []  # picoalign's outputs passed over, relative to the gallery
    # linked folders outside the gallery are followed (a gallery assembled from links to
    # other disks), each real folder once: a link back up a tree would be walked for ever. A
    # link to a folder inside the gallery is not: its files are items under their own paths.
    inside = os.path.realpath(root)
    walked = {inside}
    for dirpath, dirnames, filenames in os.walk(root, onerror=_raise, followlinks=True):
        keep = []
        for d in sorted(d for d in dirnames if not d.startswith(".")):
            real = os.path.realpath(os.path.join(dirpath, d))
            link = os.path.islink(os.path.join(dirpath, d))
            if link and (real == inside or real.startswith(inside + os.sep)):
                continue
            sub = Path(dirpath) / d
            if holds_index(sub) or holds_run(sub) or holds_demo(sub):  # not pictures
                own.append(f"{sub.relative_to(root).as_posix()}/")
                continue
            if real not in walked:
                walked.add(real)
                keep.append(d)
        dirnames[:] = keep
        for name in filenames:
            if name.startswith("."):
                continue
            full = Path(dirpath) / name
            if full.is_symlink() and not full.exists():
                broken += 1  # a link to nothing: said as such, not as "not an image"
                continue
            if not (full.suffix.lower() in exts and full.is_file()):
                other += 1
                continue
            if full.suffix.lower() == ".png" and is_sheet(full):  # a search's, saved here
                own.append(full.relative_to(root).as_posix())
                continue
            key = full.relative_to(root).as_posix()
            try:
                key.encode("utf-8")
            except UnicodeEncodeError:
                shown = key.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
                problems.add(str(root / shown), "file name is not valid UTF-8; rename it")
                continue
            found.append((key, full))
    # real files first, so that a link to one of them is the duplicate, not the file
    found.sort(key=lambda kf: (kf[1].is_symlink(), kf[0]))
    seen: set[str] = set()
    kept: list[tuple[str, Path]] = []
    for key, full in found:
        real = os.path.realpath(full)
        if real not in seen:
            seen.add(real)
            kept.append((key, full))
    duplicates = len(found) - len(kept)
    if not kept:
        if problems.skipped:
            problems.empty(f"folder:{path}")
        raise DataError(
            f"folder:{path}: no image files in it or its sub-folders"
            + (f" ({other} other files)" if other else "")
            + (f" ({broken} broken links)" if broken else "")
        )
    kept.sort()
    items = [Item(key, (), "test", key, str(full)) for key, full in kept]
    stats = []
    for _, full in kept:
        st = full.stat()
        stats.append(file_identity(st))
    fp = items_fingerprint("folder", str(root.resolve()), *stats, items=items)
    counts = (
        ("not_images", other),
        ("duplicates", duplicates),
        ("broken_links", broken),
        ("picoalign_outputs", len(own)),
    )
    notes: dict[str, Any] = {k: v for k, v in counts if v}
    if own:  # named: a user's photos put into an index's folder would be passed over too
        notes["picoalign_outputs_first"] = sorted(own)[0]
    return problems.finish(
        ImageCaptionDataset(
            root.resolve().name or str(root),
            items,
            FileLoader(label=str(root)),
            fp,
            root=root,
            notes=notes,
        )
    )


def _raise(error: OSError) -> None:
    raise DataError(f"cannot read folder {error.filename}: {error.strerror or error}")
