"""Rows that another cache file already holds: a gallery grown by ten photos encodes ten.

Why: the cache is keyed by the dataset's fingerprint, and the fingerprint changes with any
file added, removed or touched (it must: the file holds the features of exactly that
content). Without this, a 10,000-image gallery with one photo added was encoded again in
full (EfficientNet-Lite0: ~60 ms an image on 2 cores, ten minutes), and so was the same
gallery listed by a JSONL file instead of a folder.

So every feature file of user data stores a *row id* per row: for an image the identity of
its file (device, inode, size, modification and change times: :func:`image_row_ids`; not its
path, so a moved gallery folder is still known), for a caption its text.
When a dataset's own file is missing, or holds other row ids (a file rewritten in place with
its size and dates kept), the rows whose ids a file of the same encoder holds (same cache key
and library versions, same image decoding, encoded in the same math mode and MKL path) are
copied from it, and only the others are encoded; an SVG, which may show files it links to,
always is. The result equals a full encode up to rounding: a backbone's bits can depend on
which images share its batch (docs/data.md, "A gallery that grows encodes only what is
new"). Built-in datasets never take rows from other files, so the study's features stay one
encode, one way of rounding.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from picoalign.data.base import Item, digest
from picoalign.data.records import file_identity
from picoalign.features.store import UNREADABLE, TokenFeatures, read_meta

log = logging.getLogger(__name__)

# the row id of a row that is never copied: always encoded
NEVER = ""
# what a donor file's metadata must share with this encode (the rest names its dataset)
SAME = ("format", "format_version", "kind", "cache_key", "versions", "decoding")


# image files whose picture may come from other files they link to (an SVG's <image href>,
# which cairosvg follows relative to the path it was given): their stat says nothing of those
LINKING = frozenset({".svg", ".svgz"})


def image_row_ids(items: Sequence[Item]) -> list[str] | None:
    """One id per image file, None unless every item is a file: its device, its
    :func:`file_identity` (inode, size, modification time) and its change time. Why the
    change time, which the dataset fingerprint leaves out: a row id has no path, and a
    gallery deleted and another unpacked elsewhere (sizes and times restored by the archive)
    gets the freed inodes back; a new file's change time is when it was made, which nothing
    restores. A moved parent folder keeps its files' change times."""
    ids = []
    for it in items:
        if not it.source:
            return None
        try:  # a relative source is relative to this process's folder, as the loader reads it
            real = Path(it.source).resolve()
            st = real.stat()
        except OSError:
            return None
        if not real.is_file():
            return None
        if real.suffix.lower() in LINKING:  # renders files it links to: not itself alone
            ids.append(NEVER)
            continue
        ids.append(digest("image", str(st.st_dev), file_identity(st), str(st.st_ctime_ns)))
    return ids


def text_row_ids(captions: Sequence[str]) -> list[str]:
    """One id per caption: its text (the encoder, prompt included, is in the cache key)."""
    return [digest("text", c) for c in captions]


def find_rows(
    folder: Path,
    pattern: str,
    expect: dict[str, Any],
    how: dict[str, str],
    wanted: Sequence[str],
) -> dict[str, tuple[Path, int]]:
    """id → (file, row) for each of ``wanted`` that a finished feature file in ``folder``
    matching ``pattern`` holds, newest file first. A file of another encoder, version,
    decoding, math mode or MKL path is never read for rows; an unreadable one is passed by."""
    need = set(wanted) - {NEVER}
    found: dict[str, tuple[Path, int]] = {}
    files = [p for p in folder.glob(pattern) if p.is_file()]
    for path in sorted(files, key=lambda p: p.stat().st_mtime, reverse=True):
        if not need:
            break
        meta = _meta(path)
        if meta is None or any(meta.get(k) != expect.get(k) for k in SAME):
            continue
        if any(meta.get(k) != v for k, v in how.items()):
            continue
        ids = meta.get("row_ids")
        if not isinstance(ids, list) or len(ids) != meta.get("count"):
            continue
        for row, rid in enumerate(ids):
            if rid in need:
                found[rid] = (path, row)
                need.discard(rid)
    return found


def _meta(path: Path) -> dict[str, Any] | None:
    try:
        return read_meta(path)
    except UNREADABLE as e:  # the file is only a donor
        log.info("feature file %s not read for reuse: %s", path.name, e)
        return None


def read_rows(
    found: dict[str, tuple[Path, int]], row_ids: Sequence[str], rows: Sequence[int]
) -> list[tuple[list[int], TokenFeatures]]:
    """The features of ``rows`` (indices into ``row_ids``) from the files that hold them, as
    (rows, features) parts; each file is opened once and read in runs of adjacent rows."""
    by_file: dict[Path, list[tuple[int, int]]] = {}
    for r in rows:
        path, src = found[row_ids[r]]
        by_file.setdefault(path, []).append((src, r))
    parts = []
    for path, pairs in by_file.items():
        pairs.sort()
        with safe_open(str(path), framework="pt") as f:
            tokens, mask = f.get_slice("tokens"), f.get_slice("mask")
            start = 0
            while start < len(pairs):
                end = start + 1
                while end < len(pairs) and pairs[end][0] == pairs[end - 1][0] + 1:
                    end += 1
                a, b = pairs[start][0], pairs[end - 1][0] + 1
                feats = TokenFeatures(tokens[a:b], mask[a:b])
                parts.append(([r for _, r in pairs[start:end]], feats))
                start = end
    return parts


def assemble(
    n: int,
    computed: Sequence[tuple[Sequence[int], TokenFeatures]],
    reused: Sequence[tuple[Sequence[int], TokenFeatures]],
    dim: int,
) -> TokenFeatures:
    """``n`` rows put together from (rows, features) parts. The width is the encoded parts'
    (an encoder that pads to a fixed length keeps it), or wider where a reused row has more
    real tokens; a reused part's own padding beyond that is dropped, so a gallery's width
    does not grow with the longest caption some other dataset once held."""

    def real(f: TokenFeatures) -> int:
        used = f.mask.any(dim=0).nonzero()
        return int(used.max()) + 1 if len(used) else 1

    width = max([f.tokens.shape[1] for _, f in computed] + [real(f) for _, f in reused])
    tokens = torch.zeros(n, width, dim, dtype=torch.float16)
    mask = torch.zeros(n, width, dtype=torch.bool)
    for rows, f in [*computed, *reused]:
        idx = torch.as_tensor(list(rows), dtype=torch.long)
        w = min(width, f.tokens.shape[1])
        tokens[idx, :w] = f.tokens[:, :w].to(torch.float16)
        mask[idx, :w] = f.mask[:, :w]
    return TokenFeatures(tokens, mask)
