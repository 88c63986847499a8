"""What the feature cache holds, and removing it: ``picoalign cache``.

Why: every dataset and encoder pair adds a file (and a dataset file edited or touched gets a
new fingerprint, so a new file), and nothing said how large the cache had grown (a session
of small experiments reached 1.5 GB). Only what the cache writes is listed or removed:
``features/*-{images,texts}-*.safetensors`` with picoalign's format mark, and the chunk
folders of an encoding that stopped (``*.parts``); anything else in the folder is left alone.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

from picoalign.features.store import FORMAT

_CHUNK = re.compile(r"^\d{9}-\d{9}\.safetensors$")
# NAME-FINGERPRINT-KIND-ENCODER.safetensors (features.encode), or .parts while encoding
_NAME = re.compile(
    r"^(?P<dataset>.+)-[0-9a-f]+-(?P<kind>images|texts)-[0-9a-f]+\.(safetensors|parts)$"
)


@dataclass(frozen=True)
class CacheEntry:
    """One cached feature file (or the chunks of an unfinished one)."""

    path: Path
    dataset: str
    kind: str  # images | texts
    encoder: str
    count: int | None  # items encoded (None for unfinished chunks)
    bytes: int
    mtime: float

    @property
    def unfinished(self) -> bool:
        return self.path.suffix == ".parts"


def cache_entries(root: Path) -> list[CacheEntry]:
    """The cache's entries under ``root/features``, newest first (none if there is none)."""
    folder = root / "features"
    if not folder.is_dir():
        return []
    out = []
    for path in folder.iterdir():
        m = _NAME.match(path.name)
        if m is None:
            continue
        kind = m["kind"]
        if path.is_dir():
            size = sum(p.stat().st_size for p in _chunks(path))
            out.append(CacheEntry(path, m["dataset"], kind, "?", None, size, path.stat().st_mtime))
            continue
        meta = _meta(path)
        if meta is None:  # not a file the cache wrote: never listed, never removed
            continue
        st = path.stat()
        count = int(meta["count"]) if str(meta.get("count", "")).isdigit() else None
        out.append(
            CacheEntry(
                path,
                str(meta.get("dataset", "?")),
                kind,
                str(meta.get("encoder", "?")),
                count,
                st.st_size,
                st.st_mtime,
            )
        )
    return sorted(out, key=lambda e: -e.mtime)


def _meta(path: Path) -> dict | None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("picoalign", "{}"))
    except Exception:  # unreadable (safetensors raises its own type): not listed, and the
        # next encode that needs it rebuilds it
        return None
    return meta if meta.get("format") == FORMAT else None


def remove_entries(entries: list[CacheEntry]) -> int:
    """Delete ``entries``; returns the bytes freed."""
    freed = 0
    for e in entries:
        if e.path.is_dir():  # the chunks an encoding stored, and the folder if that empties it
            for chunk in _chunks(e.path):
                freed += chunk.stat().st_size
                chunk.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                e.path.rmdir()
        else:
            freed += e.bytes
            e.path.unlink(missing_ok=True)
    return freed


def _chunks(folder: Path) -> list[Path]:
    """The chunk files of an unfinished encoding (``START-END.safetensors``), nothing else."""
    return [p for p in folder.iterdir() if p.is_file() and _CHUNK.match(p.name)]


def older_than(
    entries: list[CacheEntry], days: float, now: float | None = None
) -> list[CacheEntry]:
    """The entries last written more than ``days`` ago."""
    now = time.time() if now is None else now
    return [e for e in entries if now - e.mtime > days * 86400]


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"
