"""Contact sheets: the top-k retrieved images of each query in one PNG grid, and reloading a
gallery's images by key through its dataset spec (rendered datasets have no file path)."""

from __future__ import annotations

import re
import textwrap
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from picoalign.data.base import DataError
from picoalign.fileio import atomic_write
from picoalign.marks import SHEET_SOFTWARE, is_sheet  # a sheet's PNG mark: replaceable


def check_sheet_path(path: str | Path) -> Path:
    """``path`` if a contact sheet may be written there: a new file, or a sheet picoalign
    wrote before (re-running a search updates its sheet). Anything else, say a photo given
    by a slip of the keyboard, is refused: a user's file is never overwritten."""
    out = Path(path)
    if out.suffix.lower() != ".png":  # the sheet is PNG data whatever its name says
        raise ValueError(f"contact sheet {out}: a sheet is a PNG image; give a .png path")
    if not out.exists():
        return out
    if out.is_dir():
        raise ValueError(f"contact sheet {out}: is a folder, expected a .png file path")
    if not is_sheet(out):
        raise ValueError(
            f"contact sheet {out}: the file exists and is not a sheet picoalign wrote; "
            "give another path or delete it"
        )
    return out


def contact_sheet(
    hits: Sequence[Sequence[Any]],
    load_image_fn: Callable[[Any], Any],
    out_png: str | Path,
    title: str | None = None,
    *,
    row_labels: Sequence[str] | None = None,
    thumb: float = 1.5,
) -> Path:
    """One row per query, one column per rank: the image with ``#rank score`` and key under it.

    ``hits[q]`` are :class:`picoalign.retrieval.index.Hit` (anything with ``key`` and ``score``);
    ``load_image_fn(hit)`` returns a PIL image (a failure shows an empty cell with the reason).
    ``row_labels`` (e.g. the query texts) label the rows. Written to a temp file, then renamed;
    an existing file is replaced only if it is an earlier sheet (:func:`check_sheet_path`).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    check_sheet_path(out_png)  # before drawing: a refusal costs nothing
    rows = len(hits)
    cols = max((len(h) for h in hits), default=0)
    if rows == 0 or cols == 0:
        raise ValueError("contact sheet: no hits to draw")
    if row_labels is not None and len(row_labels) != rows:
        raise ValueError(f"contact sheet: {rows} rows but {len(row_labels)} row labels")
    fig = Figure(figsize=(cols * thumb + 1.2, rows * (thumb + 0.55) + (0.5 if title else 0.1)))
    FigureCanvasAgg(fig)
    axes = np.atleast_2d(fig.subplots(rows, cols, squeeze=False))
    for r in range(rows):
        for c in range(cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(hits[r]):
                ax.axis("off")
                continue
            hit = hits[r][c]
            try:
                ax.imshow(np.asarray(load_image_fn(hit).convert("RGB")))
            except ImagesUnreadable:  # none of the images can be read: no sheet at all
                raise
            except Exception as e:  # one unreadable image must not lose the sheet
                ax.text(
                    0.5,
                    0.5,
                    f"unavailable\n{_reason(e)}",
                    ha="center",
                    va="center",
                    fontsize=6,
                    transform=ax.transAxes,
                )
            ax.set_xlabel(f"#{c + 1}  {hit.score:.3f}\n{_short(hit.key, 22)}", fontsize=7)
        if row_labels is not None:
            axes[r, 0].set_ylabel(textwrap.fill(_short(row_labels[r], 60), 18), fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fig.tight_layout()
        out = check_sheet_path(out_png)
        meta = {"Software": SHEET_SOFTWARE}
        atomic_write(out, lambda tmp: fig.savefig(tmp, format="png", dpi=110, metadata=meta))
    _rewarn(caught)
    return out


_GLYPH = re.compile(r"Glyph (\d+) .*missing from font")


def _rewarn(caught: list[warnings.WarningMessage]) -> None:
    """Matplotlib warns once per missing glyph and per text layout pass (the layout and the
    save each draw every label), so an emoji caption gave a screenful of repeats. The glyphs
    become one warning; any other warning is passed on once."""
    glyphs: dict[int, None] = {}
    others: dict[tuple[str, type[Warning]], None] = {}
    for w in caught:
        m = _GLYPH.search(str(w.message))
        if m:
            glyphs[int(m.group(1))] = None
        else:
            others[(str(w.message), w.category)] = None
    if glyphs:
        chars = " ".join(chr(g) for g in glyphs)
        warnings.warn(
            f"contact sheet: the plot font has no glyph for {len(glyphs)} character"
            f"{'s' if len(glyphs) != 1 else ''} of the labels, drawn as boxes: {chars}",
            stacklevel=3,
        )
    for message, category in others:
        warnings.warn(message, category, stacklevel=3)


class ImagesUnreadable(DataError):
    """The index's dataset cannot be loaded (moved or deleted): no image of it can be read."""


def dataset_image_loader(dataset: dict[str, Any]) -> Callable[[Any], Any]:
    """``hit -> PIL image`` for a manifest's ``dataset`` entry (``spec``, ``seed``,
    ``fingerprint``). A hit whose source is an image file is read from that file (what
    ``search`` prints, and what ``relocate`` points at); the others (rendered data, or a
    file gone) through the dataset, loaded once, on first need, and each hit's item found
    by key. Reading the dataset for every sheet refused a gallery part of which was
    relocated: its spec still named the old place."""
    from picoalign.data.images import allow_pixels, load_image

    state: dict[str, Any] = {}
    limit = dataset.get("max_image_pixels")  # what --max-image-pixels let the index read
    allow_pixels(limit)

    def items() -> tuple[Any, dict[str, Any]]:
        if "ds" not in state:
            from picoalign.data import load_dataset

            if not dataset.get("spec"):
                raise ValueError("this index records no dataset spec: cannot reload its images")
            try:
                ds = load_dataset(dataset["spec"], seed=int(dataset.get("seed", 0)), skip_bad=True)
            except (OSError, ValueError) as e:  # DataError is a ValueError
                raise ImagesUnreadable(str(e)) from e
            if dataset.get("fingerprint") and ds.fingerprint != dataset["fingerprint"]:
                warnings.warn(
                    f"dataset {dataset['spec']} changed since the index was built", stacklevel=4
                )
            if limit and hasattr(ds.load, "max_pixels"):  # a file loader: the index's limit
                ds.load.max_pixels = limit
            state["ds"], state["items"] = ds, {it.key: it for it in ds.items}
        return state["ds"], state["items"]

    def load(hit: Any) -> Any:
        source = getattr(hit, "source", "") or ""
        if source and Path(source).is_absolute() and Path(source).is_file():
            return load_image(Path(source), where=f"result {hit.key}", max_pixels=limit)
        ds, by_key = items()
        if hit.key not in by_key:
            raise ValueError(f"item {hit.key!r} is no longer in dataset {dataset['spec']}")
        return ds.load(by_key[hit.key])

    return load


def _reason(e: Exception) -> str:
    """Why a tile is empty, in a few words: a moved or deleted file is the common case."""
    text = str(e).lower()
    if isinstance(e, FileNotFoundError) or "not found" in text or "no longer in" in text:
        return "file missing"
    if "pixels" in text:  # a limit on its size (--max-image-pixels when indexed)
        return "too many pixels"
    return type(e).__name__


def _short(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"
