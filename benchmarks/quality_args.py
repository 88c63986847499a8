"""The quality study's command line (``benchmarks/quality.py --help``): its flags and their
help, apart from the study's logic so that both stay short. The checks that need more than
one flag (a recipe's own files, a confirmation's seeds) live in ``quality.main``."""

from __future__ import annotations

import argparse
from pathlib import Path

from quality_plan import FAMILIES, TRAIN_SETS, recipe_option

ROOT = Path(__file__).resolve().parent


def default_paths() -> dict[str, Path]:
    """Where the study writes when --results / --report / --plots are not given (a flag left
    out stays None in the parsed arguments, so that --epochs and --set can insist on all
    three)."""
    return {
        "results": ROOT / "results" / "quality.jsonl",
        "report": ROOT / "results" / "quality.md",
        "plots": ROOT.parent / "docs" / "img",
    }


def build_parser(description: str | None) -> argparse.ArgumentParser:
    """The study's flags; ``description`` is the script's docstring (shown by --help)."""
    defaults = default_paths()
    ap = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="2 epochs, 1 seed, Twemoji only")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--train-sets", nargs="+", default=list(TRAIN_SETS))
    ap.add_argument("--no-ablations", action="store_true")
    ap.add_argument(
        "--core",
        action="store_true",
        help="only every scorer's baseline and default PICO: no other readings, no ablations",
    )
    ap.add_argument(
        "--margins",
        type=float,
        nargs="+",
        default=None,
        help="one margin grid for every family instead of FAMILIES' (a budget probe: with one "
        "margin nothing is tuned, say so when reporting it)",
    )
    ap.add_argument(
        "--families",
        nargs="+",
        choices=list(FAMILIES),
        default=None,
        metavar="FAMILY",
        help="run only these families, in this order (with --resume, a study in parts); the "
        f"report compares whatever has run. Choices: {', '.join(FAMILIES)}",
    )
    ap.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="another budget for every family instead of the recipe's epochs=auto (20 epochs "
        "with one caption per image, 6 on scenes; lr steps stay at the same fractions of "
        "training); needs its own --results, --report and (but for a --confirm) --plots",
    )
    ap.add_argument(
        "--math",
        choices=["avx2-strict", "native"],
        default="avx2-strict",
        help="avx2-strict (default): MKL's reproducible AVX2 path (MKL_CBWR=AVX2,STRICT; the "
        "script restarts itself with it set), so that a row has the same bits at any thread "
        "count; native: MKL's fastest path for this CPU and thread count, whose rounding "
        "differs from machine to machine (benchmarks/rounding.py measures by how much)",
    )
    ap.add_argument(
        "--tune-seeds",
        type=int,
        default=None,
        metavar="N",
        help="the first N of --seeds tune: every margin runs on each of them and a family keeps "
        "the margin with the best mean validation rSum; the other seeds run that margin only. "
        "Default 3 (or all --seeds, if fewer): one seed on 127-201 validation images can pick "
        "a margin by one image, and three removed the study's one large loss on fresh seeds "
        "(docs/results.md, 'Margins picked on three seeds'); 1 is the rule of the studies "
        "before it. With --confirm the default is the seeds the study ran every margin on, "
        "read from its rows; N may be fewer, not more",
    )
    ap.add_argument(
        "--set",
        dest="recipe",
        type=recipe_option,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change the recipe for every family alike, as `picoalign train --set` does (e.g. "
        "model.finetune_text=true, sparse_backward=true); each row records it, a study "
        "refuses to resume or confirm rows of another recipe, and like --epochs it needs its "
        "own --results, --report and (but for a --confirm) --plots",
    )
    ap.add_argument("--ablation-seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--results", type=Path, help=f"(default: {defaults['results']})")
    ap.add_argument("--report", type=Path, help=f"(default: {defaults['report']})")
    ap.add_argument("--plots", type=Path, help=f"(default: {defaults['plots']})")
    ap.add_argument("--resume", action="store_true", help="skip runs already in --results")
    ap.add_argument("--overwrite", action="store_true", help="start --results over")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument(
        "--confirm",
        type=Path,
        default=None,
        metavar="STUDY_JSONL",
        help="the pre-registered confirmation (docs/results.md): on --seeds (fresh ones), run "
        "only the best PICO family and the best baseline, at the margins and families that "
        "STUDY_JSONL's tuning seed (or seeds: --tune-seeds) picked on validation; no "
        "tuning here",
    )
    ap.add_argument(
        "--with-default",
        action="store_true",
        help="with --confirm: also re-run the default PICO (pico-fine_grained) at its picked "
        "margin where it is not the best PICO family, for the report's default-PICO headline",
    )
    return ap
