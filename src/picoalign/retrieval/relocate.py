"""Point an index at its gallery after the image files moved, without encoding anything again.

Why: an index records each image's absolute path (so it works from any folder) and the
dataset spec it was built from (so a contact sheet can reload the pictures). Moving a photo
folder to another disk left every result pointing at the old place, and the only way back was
to index the whole gallery again: an hour or more of encoding for a large one, and the
feature cache does not help, since a moved folder is another dataset to it. The token
features do not depend on where the files are, so only the manifest needs rewriting.
"""

from __future__ import annotations

import os
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from picoalign.config.paths import absolute_path, map_spec_paths
from picoalign.fileio import atomic_write_json, folder_lock
from picoalign.retrieval import store


def moved_path(path: str, old: str, new: str) -> str | None:
    """``path`` with folder ``old`` replaced by ``new``; None when it is not under ``old``.
    ``path`` is compared with its ``..`` taken out as text: an index from before paths were
    stored without them records ``/a/sub/../photos/x.png`` (the old place is gone, so no
    link can be asked about)."""
    path = os.path.normpath(path) if path else path
    if path == old:
        return new
    head = old.rstrip(os.sep) + os.sep
    return new.rstrip(os.sep) + os.sep + path[len(head) :] if path.startswith(head) else None


def moved_spec(spec: str, old: str, new: str) -> str:
    """A dataset spec whose path arguments under ``old`` now lie under ``new``.

    A path with ``:`` in it (``folder:/photos/shots 12:30``) is read whole only where it
    exists, and after the move the old one does not: such a spec of one path is then moved
    as text, its ``:KEY=VALUE`` options kept (the gallery walkthrough's: the spec stayed
    behind, and every later contact sheet failed on it)."""
    out = map_spec_paths(spec, lambda path: moved_path(path, old, new) or path)
    if out != spec:
        return out
    name, _, rest = spec.partition(":")
    tail = ""
    while (opt := re.search(r":[A-Za-z_-]+=[^:/]*$", rest)) is not None:
        rest, tail = rest[: opt.start()], rest[opt.start() :] + tail
    moved = moved_path(rest, old, new)
    return f"{name}:{moved}{tail}" if moved is not None else spec


@dataclass(frozen=True)
class Relocation:
    """What :func:`relocate_index` changed: how many sources moved, how many of those are not
    at their new place, whether the dataset spec moved, and the new spec."""

    moved: int
    missing: list[str]
    spec: str | None
    spec_moved: bool
    kind: str = "images"


def relocate_manifest(manifest: dict[str, Any], old: str, new: str) -> tuple[dict[str, Any], int]:
    """A copy of ``manifest`` with its sources and dataset spec moved from ``old`` to ``new``
    (both absolute folders), and how many sources moved. Pure: reads no file."""
    sources, moved = [], 0
    for s in manifest["sources"]:
        m = moved_path(s, old, new) if s else None
        sources.append(m or s)
        moved += m is not None
    out = {**manifest, "sources": sources}
    dataset = manifest.get("dataset")
    if isinstance(dataset, dict) and dataset.get("spec"):
        out["dataset"] = {**dataset, "spec": moved_spec(dataset["spec"], old, new)}
    return out, moved


def relocate_index(path: str | Path, old: str | Path, new: str | Path) -> Relocation:
    """Rewrite index ``path``'s manifest so that its sources and dataset spec under folder
    ``old`` point under ``new``; the token features and the first stage are untouched.

    Refused, with nothing written, when nothing of the index lies under ``old``, when
    ``new`` is not a folder, or when none of the moved files is at its new place (a typo in
    either folder). Files missing at the new place are returned (and the caller says so):
    the index still holds their features. The manifest records each relocation."""
    path = Path(path)
    old_s, new_s = absolute_path(str(old)), absolute_path(str(new))
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: gallery index not found")
    with folder_lock(path, "relocating it"):
        man = store.read_manifest(path)  # an index, before anything is said of the folders
        if not Path(new_s).is_dir():
            what = "is a file, not a folder" if Path(new_s).exists() else "not found"
            raise FileNotFoundError(f"{new}: the gallery's new folder {what}")
        if old_s == new_s:
            raise ValueError(f"{old} and {new} are the same folder: nothing to move")
        out, moved = relocate_manifest(man, old_s, new_s)
        spec = (man.get("dataset") or {}).get("spec")
        new_spec = (out.get("dataset") or {}).get("spec")
        if not moved and new_spec == spec:
            example = next((s for s in man["sources"] if s), None)
            where = f"; its sources are like {example}" if example else ""
            raise ValueError(f"index {path}: nothing in it lies under {old_s}{where}")
        changed = [n for o, n in zip(man["sources"], out["sources"], strict=True) if o != n]
        missing = [p for p in changed if not os.path.exists(p)]
        if changed and len(missing) == len(changed):
            raise ValueError(
                f"none of the {len(changed)} moved image files is under {new_s} (e.g. "
                f"{missing[0]}): check both folders; the index is unchanged"
            )
        if new_spec != spec:
            out["dataset"] = {**out["dataset"], **_dataset_check(new_spec, out)}
        out["relocated"] = [
            *man.get("relocated", []),
            {"from": old_s, "to": new_s, "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
        ]
        atomic_write_json(out, path / "manifest.json")
    return Relocation(moved, missing, new_spec, new_spec != spec, str(man.get("kind", "images")))


def _dataset_check(spec: str, manifest: dict[str, Any]) -> dict[str, Any]:
    """The moved spec's fingerprint, when it loads and holds every indexed item: the contact
    sheet compares it to tell a changed dataset from a moved one. Otherwise a warning, and the
    old fingerprint stays (the sheet then warns that the dataset changed, which it did)."""
    from picoalign.data import load_dataset

    try:
        ds = load_dataset(spec, seed=int(manifest["dataset"].get("seed", 0)), skip_bad=True)
    except (ValueError, OSError) as e:
        warnings.warn(f"the moved dataset {spec} does not load ({e})", stacklevel=3)
        return {}
    keys = {it.key for it in ds.items}
    lost = sum(k not in keys for k in manifest["keys"])
    if lost:
        warnings.warn(
            f"the moved dataset {spec} lacks {lost} of the index's {len(manifest['keys'])} "
            "items: contact sheets show them as missing",
            stacklevel=3,
        )
        return {}
    return {"fingerprint": ds.fingerprint}
