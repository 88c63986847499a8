"""Did every family's validation curve level off? (issue 12: train until it does)

Reads the study's seed-0 histories (``docs/img/histories/``, written by
``benchmarks/quality.py``) and, for every family at its validation-picked margin, prints the
validation rSum at a quarter, half, three quarters and the end of the run (epochs 5, 10, 15
and 20 of a 20-epoch run, 2, 3, 5 and 6 of a 6-epoch one), the change over the last quarter
and the peak; with ``--out`` it also plots one panel per training set (the docs'
``docs/img/curves.png``, replaced only with ``--overwrite``).

    python benchmarks/curves.py            # after benchmarks/quality.py: the table
    python benchmarks/curves.py --out docs/img/curves.png --overwrite   # and the docs' plot
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

import quality as q
import quality_rows
from _common import add_out_arguments, refuse_to_overwrite
from picoalign.fileio import atomic_write

ROOT = Path(__file__).resolve().parent


def val_curve(hist: list[dict]) -> list[tuple[int, float]]:
    key = next(k for k in hist[-1] if k.endswith("_rsum"))
    return [(r["epoch"], r[key]) for r in hist if key in r]


def quarter_marks(last: int) -> tuple[list[int], int]:
    """The epochs a curve is read at (¼, ½, ¾ and the end of a ``last``-epoch run) and the
    length of its last quarter, over which "has it levelled off" is judged."""
    return [max(1, math.ceil(last * k / 4)) for k in (1, 2, 3, 4)], max(1, round(last / 4))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--results", type=Path, default=ROOT / "results" / "quality.jsonl")
    ap.add_argument("--histories", type=Path, default=ROOT.parent / "docs" / "img" / "histories")
    add_out_arguments(ap, None, "a PNG of the curves, one panel per training set (none: no plot)")
    ap.add_argument(
        "--tune-seeds",
        type=int,
        nargs="+",
        default=None,
        metavar="SEED",
        help="the seeds whose mean validation rSum picked the margins (default: those the "
        "results ran every margin on, as quality.py --confirm reads them); the curves are "
        "seed 0's either way",
    )
    args = ap.parse_args(argv)
    refuse_to_overwrite([args.out] if args.out else [], args.overwrite)
    rows = [json.loads(x) for x in args.results.read_text().splitlines() if x]
    sets = list(dict.fromkeys(r["train_set"] for r in rows))
    fams = list(dict.fromkeys(r["family"] for r in rows))
    if not args.histories.is_dir() or not any(args.histories.glob("*.json")):
        ap.error(  # an empty table and a blank figure would look like a result
            f"--histories {args.histories}: no histories there (a study writes seed 0's into "
            "PLOTS/histories; quality.py --quick and --confirm write none)"
        )
    fig, axes = plt.subplots(1, len(sets), figsize=(4.2 * len(sets), 3.6), squeeze=False)
    print(
        "| train set | family (margin) | val at ¼ (epoch) | ½ | ¾ | end | Δ over the last ¼ "
        "| peak (epoch) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for ax, ts in zip(axes[0], sets, strict=True):
        for fam in fams:
            try:
                tune = args.tune_seeds or quality_rows.study_tune_seeds(rows, ts)
                m = quality_rows.pick_margin(rows, fam, ts, tune)
            except ValueError:
                continue
            path = q.history_path(args.histories.parent, fam, m, ts)
            if not path.exists():
                continue
            curve = dict(val_curve(json.loads(path.read_text())))
            last = max(curve)
            marks, window = quarter_marks(last)
            cells = " | ".join(
                "–" if curve.get(e) is None else f"{curve[e]:.1f} ({e})" for e in marks
            )
            tail = curve[last] - curve.get(last - window, float("nan"))
            peak = max(curve, key=lambda e: (curve[e], -e))  # the first epoch at the maximum
            print(f"| {ts} | {fam} (m={m}) | {cells} | {tail:+.1f} | {curve[peak]:.1f} ({peak}) |")
            style = "--" if fam.startswith("pico") else "-"
            ax.plot(list(curve), list(curve.values()), style, label=f"{fam} m={m}")
        ax.set(title=ts, xlabel="epoch", ylabel="validation rSum (seed 0)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    if args.out is not None:
        atomic_write(args.out, lambda tmp: fig.savefig(tmp, dpi=90, format="png"))
        print(f"wrote {args.out}")
    plt.close(fig)
    return 0


if __name__ == "__main__":
    sys.exit(main())
