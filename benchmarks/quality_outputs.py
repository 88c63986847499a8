"""What the quality study writes besides its rows: the report and the training-curve plots.

Apart from ``quality.py`` (which runs the study) because both are pure of training: they
read rows and seed 0's histories, and ``--report-only`` is nothing else.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from _common import write_unless_changed
from picoalign.cli.plots import plot_training
from quality_plan import FAMILIES, history_path, slug
from quality_rows import DEFAULT_PICO, best_baseline, best_pico, pick_margin


def draw_plots(
    rows: list[dict[str, Any]],
    train_sets: list[str],
    tune: list[int],
    out: Path,
    dest: Path | None = None,
) -> None:
    """One training-curve figure per training set: seed 0's histories of the best baseline,
    ``fine_grained``, the best PICO family and the default PICO, each at its picked margin.
    The histories are read from ``out``; the figures go there too, or to ``dest``.

    A confirmation has no seed-0 histories and two families, so it never calls this and
    leaves the study's plots alone; ``--report-only`` redraws them."""
    for ts in train_sets:
        sub = [r for r in rows if r["train_set"] == ts and r["family"] in FAMILIES]
        try:
            shown = {best_baseline(sub, ts, tune), "fine_grained", best_pico(sub, ts, tune)}
        except ValueError:  # this set has not run
            continue
        hist = {}
        for fam in sorted(shown | {DEFAULT_PICO}):
            try:
                m = pick_margin(sub, fam, ts, tune)
            except ValueError:
                continue
            p = history_path(out, fam, m, ts)
            if p.exists():
                hist[f"{fam} m={m}"] = json.loads(p.read_text())
        if hist:
            plot_training(hist, (dest or out) / f"training-{slug(ts)}.png")


def write_outputs(
    report: Path,
    text: str,
    *,
    overwrite: bool,
    plots: tuple[list[dict[str, Any]], list[str], list[int], Path] | None = None,
) -> list[Path]:
    """Write the report ``text`` and (``plots``: :func:`draw_plots`' rows, training sets,
    tuning seeds and folder) the plots; return the files that changed. All are drawn aside
    first, and without ``overwrite`` a file that exists and would change stops it, with
    nothing written (``_common.write_unless_changed``)."""
    with tempfile.TemporaryDirectory() as tmp:
        staged = {report: Path(tmp) / "report.md"}
        staged[report].write_text(text)
        if plots is not None:
            rows, train_sets, tune, folder = plots
            (Path(tmp) / "plots").mkdir()
            draw_plots(rows, train_sets, tune, folder, Path(tmp) / "plots")
            for png in sorted((Path(tmp) / "plots").iterdir()):
                staged[folder / png.name] = png
        return write_unless_changed(staged, overwrite, "--report-only")
