"""The feature cache: finding, writing and resuming a dataset's features
(:func:`cached_features`), and what it holds and removing it (``picoalign cache``).

Why: every dataset and encoder pair adds a file (and a dataset file edited or touched gets a
new fingerprint, so a new file), and nothing said how large the cache had grown (a session
of small experiments reached 1.5 GB). Only what the cache writes is listed or removed:
``features/*-{images,texts}-*.safetensors`` with picoalign's format mark, and the chunk
folders of an encoding that stopped (``*.parts``); anything else in the folder is left alone.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from picoalign.data.base import ImageCaptionDataset, digest
from picoalign.data.images import DECODING
from picoalign.encoders import ImageEncoder, TextEncoder
from picoalign.features import reuse
from picoalign.features.store import (
    FORMAT,
    FORMAT_VERSION,
    UNREADABLE,
    TokenFeatures,
    atomic_save,
    read_meta,
    read_safetensors,
)
from picoalign.numerics import math_mode, mkl_branch
from picoalign.progress import progress_bar

log = logging.getLogger(__name__)

_CHUNK = re.compile(r"^\d{9}-\d{9}\.safetensors$")
# NAME-FINGERPRINT-KIND-ENCODER.safetensors (features.encode), or .parts while encoding
_NAME = re.compile(
    r"^(?P<dataset>.+)-[0-9a-f]+-(?P<kind>images|texts)-[0-9a-f]+\.(safetensors|parts)$"
)


def cached_features(
    kind: Literal["images", "texts"],
    dataset: ImageCaptionDataset,
    encoder: ImageEncoder | TextEncoder,
    content: Sequence[str],
    cache_dir: Path | None,
    compute: Callable[[Sequence[int], Any], TokenFeatures],
    *,
    chunk: int,
    progress: bool = True,
    device: str | torch.device = "cpu",
    row_ids: Sequence[str] | None = None,
) -> tuple[TokenFeatures, str | None, dict[str, str]]:
    """``kind`` features from the cache if valid for this run, else computed chunk by chunk
    (``compute(rows, bar)`` encodes those rows of ``content``), resuming from stored chunks.

    ``row_ids`` (one per row of ``content``; user data only) are stored with the features,
    and rows whose ids an earlier file of the same encoder holds are copied from it instead
    of encoded (:mod:`picoalign.features.reuse`).

    Also returns how the features were computed: ``{"math": …, "mkl": …}`` (and
    ``"reused"``, the rows copied from other files, when it encoded), the math mode
    (``numerics.math_mode``) and the code path MKL really ran (``mkl_branch``: the same
    mode gives other bits on an AMD CPU than on an Intel one); ``"unknown"`` for caches from
    before each was recorded. Neither is part of the cache key: they change the encoders'
    rounding, not their definition, so an existing cache is kept; but a row trained on it
    reproduces bit for bit only with the same cache, so they are reported (docs/results.md,
    "Rounding")."""
    expect = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "fingerprint": dataset.fingerprint,
        "cache_key": encoder.cache_key,
        "versions": encoder.versions(),
        "count": len(content),
        "content_sha1": digest(*content),
    }
    if kind == "images" and dataset.features is None:
        expect["decoding"] = DECODING  # how images were decoded (downscaling) is part of them
    unit = "img" if kind == "images" else "cap"

    def new_bar() -> Any:  # made only when something is encoded: a cache hit draws no 0/N bar
        return progress_bar(
            total=len(content), desc=f"{kind} [{encoder.name}]", unit=unit, disable=not progress
        )

    how = _how(torch.device(device))
    if cache_dir is None or not getattr(encoder, "cacheable", True):
        with new_bar() as bar:
            return compute(range(len(content)), bar), None, how
    safe_name = re.sub(r"[^A-Za-z0-9_.-]+", "_", dataset.name)[:40]
    enc_id = digest(encoder.cache_config)
    path = cache_dir / "features" / f"{safe_name}-{dataset.fingerprint}-{kind}-{enc_id}.safetensors"
    hit = _cache_hit(path, expect, row_ids)
    if hit is not None:
        return hit[0], str(path), hit[1]
    found = {}
    if row_ids is not None:
        # this dataset's own stale file too: its unchanged rows are as good as any donor's
        found = reuse.find_rows(path.parent, f"*-{kind}-{enc_id}.safetensors", expect, how,
                                row_ids)  # fmt: skip
    todo = [i for i in range(len(content)) if row_ids is None or row_ids[i] not in found]
    # a chunk's rows are positions in this encode's list of rows to do: a chunk stored for
    # another list (other donors then, or none) would be other rows, and is recomputed
    partial = {"todo": digest(*(row_ids[i] for i in todo))} if row_ids is not None else {}
    parts_dir = path.with_name(path.name.removesuffix(".safetensors") + ".parts")
    parts: list[tuple[Sequence[int], TokenFeatures]] = []
    # a chunk stored in another mode or MKL path is recomputed: one file, one way of rounding
    with new_bar() as bar, _tidy(parts_dir):
        if found:
            bar.set_postfix_str(f"{len(content) - len(todo)} reused from the cache")
            bar.update(len(content) - len(todo))
        for start in range(0, len(todo), chunk):
            end = min(len(todo), start + chunk)
            part = parts_dir / f"{start:09d}-{end:09d}.safetensors"
            part_meta = {**expect, "rows": [start, end], **partial, **how}
            feats = _read_part(part, part_meta)
            if feats is None:
                feats = compute(todo[start:end], bar)
                atomic_save({"tokens": feats.tokens, "mask": feats.mask}, part_meta, part)
            else:
                bar.update(end - start)
            parts.append((todo[start:end], feats))
    if found:
        rest = [i for i in range(len(content)) if row_ids[i] in found]
        try:
            reused = reuse.read_rows(found, row_ids, rest)
        except UNREADABLE as e:  # a donor removed or cut since it was found (cache --clear)
            log.warning("reused feature rows unreadable (%s): encoding them instead", e)
            reused = [(rest, compute(rest, None))]
        feats = reuse.assemble(len(content), parts, reused, encoder.dim)
    else:  # one encode, chunk after chunk: the same bits as in one go
        feats = TokenFeatures.concat([(f.tokens, f.mask) for _, f in parts], encoder.dim)
    meta = {
        **expect,
        "dataset": dataset.name,
        "encoder": encoder.name,
        "cache_config": encoder.cache_config,
        "preprocessing": getattr(encoder, "preprocessing", ""),
        "tokens": int(feats.tokens.shape[1]),
        "dim": feats.dim,
        **how,
        **({"row_ids": list(row_ids)} if row_ids is not None else {}),
        **({"reused": len(content) - len(todo)} if found else {}),
    }
    atomic_save({"tokens": feats.tokens, "mask": feats.mask}, meta, path)
    shutil.rmtree(parts_dir, ignore_errors=True)
    return feats, str(path), {**how, "reused": str(len(content) - len(todo))}


def _cache_hit(
    path: Path, expect: dict[str, Any], row_ids: Sequence[str] | None
) -> tuple[TokenFeatures, dict[str, str]] | None:
    """The features of the cache file ``path`` and how they were rounded, if it exists and
    holds what ``expect`` describes (and the same ``row_ids``); None, said in the log, if it
    is unreadable or stale: it is then rebuilt."""
    if not path.exists():
        return None
    try:
        tensors, meta = read_safetensors(path)
    except UNREADABLE as e:  # a truncated or damaged file
        log.warning("rebuilding unreadable feature cache %s: %s", path.name, e)
        return None
    stale = [k for k, v in expect.items() if meta.get(k) != v]
    if row_ids is not None and meta.get("row_ids", list(row_ids)) != list(row_ids):
        # the fingerprint leaves out the change time (a chmod would re-encode all); a file
        # edited in place with its size and dates kept changes only that
        stale.append("row_ids")
    if stale:
        log.warning("rebuilding feature cache %s: %s changed", path.name, ", ".join(stale))
        return None
    log.info("feature cache hit: %s", path)
    how = {k: str(meta.get(k, "unknown")) for k in ("math", "mkl")}
    return TokenFeatures(tensors["tokens"], tensors["mask"]), how


def _how(device: torch.device) -> dict[str, str]:
    """How features encoded on ``device`` are rounded: the CPU's math mode and MKL path, or
    the accelerator and its name (its kernels round otherwise than any CPU)."""
    if device.type == "cpu":
        return {"math": math_mode(), "mkl": mkl_branch()}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return {"math": device.type, "mkl": f"none ({name})"}


@contextlib.contextmanager
def _tidy(parts_dir: Path) -> Iterator[None]:
    """On a stop before the first chunk is stored, leave no empty chunk folder behind."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(OSError):
            parts_dir.rmdir()  # only if empty: stored chunks are the point
        raise


def _read_part(path: Path, expect: dict[str, Any]) -> TokenFeatures | None:
    """A stored chunk if it belongs to this exact run (the same metadata and rows, and no
    key this run does not write: a chunk of a reusing encode holds a to-do list whose rows
    are not the dataset's), else None."""
    if not path.exists():
        return None
    try:
        tensors, meta = read_safetensors(path)
    except UNREADABLE as e:  # unreadable chunk: encode it again
        log.warning("re-encoding unreadable feature cache chunk %s: %s", path.name, e)
        return None
    if meta.keys() == expect.keys() and all(meta[k] == v for k, v in expect.items()):
        log.info("feature cache chunk reused: %s", path)
        return TokenFeatures(tensors["tokens"], tensors["mask"])
    return None


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
    try:
        meta = read_meta(path)
    except UNREADABLE:  # not listed; the next encode that needs it rebuilds it
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
