"""Absolute paths in what a run stores, so a run folder works from any working directory.

Why: ``config.yaml`` and index manifests are read later, often from another folder
(``picoalign evaluate --checkpoint ../runs/a``); a relative ``jsonl:shapes/data.jsonl`` stored
as typed then points nowhere.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

# the placeholder names of dataset-spec arguments that are paths (picoalign.data.spec)
PATH_ARGS = frozenset({"PATH", "JSON", "IMAGE_ROOT", "DIR"})


def absolute_path(path: str) -> str:
    """``path`` with ``~`` expanded, made absolute against the current folder, ``.`` and
    ``..`` taken out where that names the same file (``cfg/../data.jsonl`` is
    ``data.jsonl``: a resume given the second was refused as other data). A ``..`` after a
    link is kept: ``link/..`` is the parent of where the link points, which a textual
    ``os.path.abspath`` got wrong (train then read another folder's file). Links are kept."""
    parts: list[str] = []
    for part in Path(path).expanduser().absolute().parts:
        if part == "..":
            if len(parts) > 1 and parts[-1] != ".." and not Path(*parts).is_symlink():
                parts.pop()
                continue
            parts.append(part)
        elif part != ".":
            parts.append(part)
    return str(Path(*parts))


def real_path(path: str) -> str:
    """``path`` with ``~`` expanded and every link resolved: an output folder reached through
    a link is the folder it points to (its lock, its replacement), not a second folder."""
    return str(Path(path).expanduser().resolve())


def map_spec_paths(spec: str, fn: Callable[[str], str]) -> str:
    """A dataset spec with ``fn`` applied to each of its path arguments; built-in names and
    specs that do not parse stay as they are (loading them reports the problem)."""
    from picoalign.data.spec import parse_spec_options

    try:
        entry, args, options = parse_spec_options(spec)
    except ValueError:
        return spec
    pairs = zip(entry.args, args, strict=True)
    fixed = [fn(a) if n in PATH_ARGS else a for n, a in pairs]
    # KEY=VALUE options (val=strict, size=N, ...) are part of the run's data: kept as given
    return ":".join((entry.name, *fixed, *(f"{k}={v}" for k, v in options.items())))


def absolute_spec(spec: str) -> str:
    """A dataset spec with its path arguments absolute (``jsonl:d.jsonl`` →
    ``jsonl:/cwd/d.jsonl``)."""
    return map_spec_paths(spec, absolute_path)


def absolute_source(source: str) -> str:
    """An item's source (index manifests): a file path made absolute; a rendered item's
    opaque string (not a file) unchanged."""
    return absolute_path(source) if source and Path(source).is_file() else source


def absolute_encoder(spec: str) -> str:
    """An ``hf:`` encoder given as a relative path to a local folder, made absolute
    (``hf:models/vit`` → ``hf:/cwd/models/vit``); a hub name or any other spec unchanged.
    Why: a run stored ``hf:models/vit`` and evaluated from another folder read it as a hub
    name (or, worse, another folder's ``models/vit``)."""
    if not spec.startswith("hf:"):
        return spec
    path = spec[3:]
    if Path(path).is_absolute() or not Path(path).expanduser().is_dir():
        return spec
    return f"hf:{absolute_path(path)}"


def with_absolute_paths(cfg: Any) -> Any:
    """A copy of a TrainConfig whose ``data`` paths, ``out`` (links resolved), ``cache_dir``
    and local ``hf:`` encoder folders are absolute."""
    changes: dict[str, Any] = {"data": absolute_spec(cfg.data), "out": real_path(cfg.out)}
    if cfg.cache_dir is not None:
        changes["cache_dir"] = absolute_path(cfg.cache_dir)
    model = cfg.model
    encoders = {
        "image_encoder": absolute_encoder(model.image_encoder),
        "text_encoder": absolute_encoder(model.text_encoder),
    }
    if encoders != {"image_encoder": model.image_encoder, "text_encoder": model.text_encoder}:
        changes["model"] = dataclasses.replace(model, **encoders)
    return dataclasses.replace(cfg, **changes)
