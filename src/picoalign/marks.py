"""How picoalign knows its own outputs again: a gallery index's manifest, a training run's
folder, a demo's folder and a search's contact sheet.

Why a module of its own, below ``data``, ``retrieval`` and ``cli``: the writers mark what
they write, and others must recognise it. ``index --overwrite`` replaces only an index; a
sheet replaces only a sheet; ``demo`` replaces only its own folder; and a ``folder:`` gallery
walk passes over all of them and over training runs, since none is a picture of the gallery
(a re-index took a saved contact sheet in as an image).
"""

from __future__ import annotations

import json
from pathlib import Path

INDEX_FORMAT, INDEX_FORMAT_VERSION = "picoalign-gallery", 1
SHEET_SOFTWARE = "picoalign contact sheet"  # the PNG "Software" text of a contact sheet
DEMO_MARK = "picoalign demo"  # "written_by" in a demo folder's demo.json


def json_dict(path: Path) -> dict | None:
    """The JSON object in file ``path``; None if there is none (no file, not JSON, not an
    object): how a marker file is read, where a user's own file of that name is no error."""
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def holds_index(path: Path) -> bool:
    """Whether ``path`` holds a gallery index: a ``manifest.json`` of picoalign's format
    (written last, so a folder with one is a complete index, never a half-built write). A
    web app's own manifest.json made a folder "an index", and ``--overwrite`` replaced it."""
    man = json_dict(Path(path) / "manifest.json")
    return man is not None and man.get("format") == INDEX_FORMAT


def holds_run(path: Path) -> bool:
    """Whether ``path`` is a training run's folder: its ``config.yaml`` and a saved model in
    ``best/`` or ``last/``. A run kept in a gallery is not pictures of it (its
    ``training.png`` was indexed as an image)."""
    path = Path(path)
    return (path / "config.yaml").is_file() and any(
        (path / d / "model.safetensors").is_file() for d in ("best", "last")
    )


def holds_demo(path: Path) -> bool:
    """Whether ``path`` is a folder ``picoalign demo`` wrote (its ``demo.json``)."""
    demo = json_dict(Path(path) / "demo.json")
    return demo is not None and demo.get("written_by") == DEMO_MARK


def is_sheet(path: Path) -> bool:
    """Whether ``path`` is a contact sheet picoalign drew (its PNG mark; header only)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as png:
            return png.info.get("Software") == SHEET_SOFTWARE
    except (OSError, UnidentifiedImageError, ValueError):
        return False
