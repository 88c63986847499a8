"""How picoalign knows its own outputs again: a gallery index's manifest, a training run's
folder and a search's contact sheet.

Why a module of its own, below ``data`` and ``retrieval``: the writer (``retrieval``) marks
what it writes, and others must recognise it. ``index --overwrite`` replaces only an index;
a sheet replaces only a sheet; and a ``folder:`` gallery walk passes over both, since a
contact sheet saved into the gallery, or an index folder kept inside it, is not a picture of
the gallery (a re-index took them in as images).
"""

from __future__ import annotations

import json
from pathlib import Path

INDEX_FORMAT, INDEX_FORMAT_VERSION = "picoalign-gallery", 1
SHEET_SOFTWARE = "picoalign contact sheet"  # the PNG "Software" text of a contact sheet
DEMO_MARK = "picoalign demo"  # "written_by" in a demo folder's demo.json


def holds_index(path: Path) -> bool:
    """Whether ``path`` holds a gallery index: a ``manifest.json`` of picoalign's format
    (written last, so a folder with one is a complete index, never a half-built write). A
    web app's own manifest.json made a folder "an index", and ``--overwrite`` replaced it."""
    try:
        with open(Path(path) / "manifest.json", encoding="utf-8") as f:
            man = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(man, dict) and man.get("format") == INDEX_FORMAT


def holds_run(path: Path) -> bool:
    """Whether ``path`` is a training run's folder (its ``config.yaml`` and a saved model in
    ``best/`` or ``last/``) or a demo's (its ``demo.json``). A run kept in a gallery is not
    pictures of it (its ``training.png`` was indexed as an image)."""
    path = Path(path)
    if (path / "config.yaml").is_file() and any(
        (path / d / "model.safetensors").is_file() for d in ("best", "last")
    ):
        return True
    try:
        with open(path / "demo.json", encoding="utf-8") as f:
            demo = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(demo, dict) and demo.get("written_by") == DEMO_MARK


def is_sheet(path: Path) -> bool:
    """Whether ``path`` is a contact sheet picoalign drew (its PNG mark; header only)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as png:
            return png.info.get("Software") == SHEET_SOFTWARE
    except (OSError, UnidentifiedImageError, ValueError):
        return False
