"""What ``picoalign search`` reads and prints: its queries, read by the index's kind, and
its results as a table or JSON, with the files that moved or changed since indexing said.

Apart from the command (``cli.retrieval``) because each piece is a small pure function of
the index and the hits, tested on its own.
"""

from __future__ import annotations

import shlex
import warnings
from pathlib import Path
from typing import Any


def refuse_non_image_files(queries: list[str], index: str) -> None:
    """The queries of a caption index are image files: each must be one, said in the
    command's terms before the model loads (``GalleryIndex.search_image`` checks them again,
    for Python callers). A text given there said "a red circle: image not found", as if a
    file had gone missing."""
    for q in queries:
        path = Path(q)
        if path.is_dir():
            raise ValueError(f"{q}: is a folder; a caption index is searched by image files")
        if not path.is_file():
            raise ValueError(
                f"{q}: no such image file; index {index} holds captions, so its queries are "
                "image files (an index built with --kind images is searched by text)"
            )


def hit_rows(hits: list[list[Any]], queries: list[str], gallery: Any, rerank: bool) -> list:
    """``search --json``: per query its hits, each with its ``file`` status on an image
    index ("ok", "missing" or "changed" since indexing: a program reading the JSON must not
    serve a deleted file as rank 1, and the warnings go to stderr only) and the ``score``'s
    kind: the model's own score, or with ``--no-rerank`` the pooled inner product of stage 1,
    on another scale."""
    status: dict[str, str] = {}
    if gallery.kind == "images":
        gone, changed = gallery.stale_sources(sorted({h.row for hs in hits for h in hs}))
        status = {**dict.fromkeys(changed, "changed"), **dict.fromkeys(gone, "missing")}
    kind = "model" if rerank else "pooled"
    return [
        {
            "query": qry,
            "hits": [
                {
                    "rank": r,
                    **h.to_dict(),
                    "score_kind": kind,
                    **({"file": status.get(h.source, "ok")} if gallery.kind == "images" else {}),
                }
                for r, h in enumerate(hs, 1)
            ],
        }
        for qry, hs in zip(queries, hits, strict=True)
    ]


def refuse_image_files(queries: list[str]) -> None:
    """An image file given as a query of an image index would be searched as the text of
    its path, and rank the gallery plausibly enough to hide the mistake."""
    from picoalign.data.folder import image_extensions

    exts = image_extensions()
    named = [q for q in queries if Path(q).suffix.lower() in exts]
    files = [q for q in named if Path(q).is_file()]  # a file name may hold spaces
    # a sentence that happens to end in ".png" is only warned about when it has no spaces
    for q in (q for q in named if not Path(q).is_file() and " " not in q.strip()):
        warnings.warn(f"{q} looks like an image file, but there is none: searched as text",
                      stacklevel=3)  # fmt: skip
    if files:
        raise ValueError(
            f"{files[0]} is an image file, and an image index is searched by text: "
            "searching images by an image is not supported (a caption index, built with "
            "picoalign index --kind captions from data with captions, is searched by image); "
            "to search for this text, give --text"
        )


def warn_stale_sources(hits: list[list[Any]], gallery: Any, index: str) -> None:
    """Results that name image files no longer there (a gallery moved or pruned since it was
    indexed), or edited since, are still printed, since the index holds their features, but
    not silently: a contact sheet would draw the new picture beside the old one's score."""
    if gallery.kind != "images":
        return
    gone, changed = gallery.stale_sources(sorted({h.row for hs in hits for h in hs}))
    if changed:
        warnings.warn(
            f"{len(changed)} of the results' image files changed since index {index} was built "
            f"(size or modification time), e.g. {changed[0]}: the index ranks them by the "
            f"pictures they held then; index the gallery again (--overwrite) to see them as "
            "they are",
            stacklevel=2,
        )
    if gone:
        warnings.warn(
            f"{len(gone)} of the results' image files {'is' if len(gone) == 1 else 'are'} no "
            f"longer at {'its path' if len(gone) == 1 else 'their paths'} (moved or deleted "
            f"since index {index} was built), e.g. {gone[0]}; if the gallery moved, "
            f"picoalign relocate {shlex.quote(index)} OLD_FOLDER NEW_FOLDER points the index "
            "at it",
            stacklevel=2,
        )


def _cell(text: str) -> str:
    """A table cell on one line: a newline or tab in a file name would break the table."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def format_hits(hits: list[Any]) -> str:
    """An aligned table: rank, score, key, source (and caption for caption indexes)."""
    captions = any(h.caption is not None for h in hits)
    head = ["rank", "score", "key", *(["caption"] if captions else []), "source"]
    rows = [
        [
            str(r), f"{h.score:.4f}", _cell(h.key), *([_cell(h.caption or "")] if captions else []),
            _cell(h.source),
        ]
        for r, h in enumerate(hits, 1)
    ]  # fmt: skip
    widths = [max(len(x) for x in col) for col in zip(head, *rows, strict=True)]
    right = {0, 1}  # numbers align right

    def line(cells: list[str]) -> str:
        out = [
            c.rjust(w) if j in right else c.ljust(w)
            for j, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(out).rstrip()

    return "\n".join(line(r) for r in [head, *rows]) if rows else "  (no results)"
