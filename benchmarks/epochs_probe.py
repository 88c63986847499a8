"""How the training budget and the checkpoint rule move each test set (issue 12's curve check).

The study trains every family 20 epochs and scores the last epoch. The pooled scorers'
validation rSum peaks near epoch 5 and then falls (``benchmarks/curves.py``). This probe
retrains families at margin 0.8, seed 0, for fewer epochs (the lr steps keep their
fractions) and with the best-by-validation checkpoint of the 20-epoch run. It prints
validation and test rSum for each; writes ``benchmarks/results/epochs_probe.md``.

    python benchmarks/epochs_probe.py                          # global and pico-global, Twemoji
    python benchmarks/epochs_probe.py --families fine_grained pico-fine_grained
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import quality as q
from _common import add_out_arguments, refuse_to_overwrite
from picoalign.features import dataset_features
from picoalign.fileio import atomic_write_text

ROOT = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--train-set", default="twemoji", choices=list(q.TRAIN_SETS))
    ap.add_argument("--families", nargs="+", default=["global", "pico-global"])
    ap.add_argument("--epochs", type=int, nargs="+", default=[6, 10, 20])
    ap.add_argument("--margin", type=float, default=0.8)
    ap.add_argument("--seed", type=int, default=0)
    add_out_arguments(ap, ROOT / "results" / "epochs_probe.md", "the table")
    args = ap.parse_args(argv)
    refuse_to_overwrite([args.out], args.overwrite)
    feats = {t: dataset_features(t, progress=False) for t in q.TRAIN_SETS[args.train_set]}
    tests = q.TRAIN_SETS[args.train_set]
    lines = [
        f"train {args.train_set}, margin {args.margin}, seed {args.seed}; PICO scored plain\n",
        "| family | budget | checkpoint (epoch) | val rSum | "
        + " | ".join(f"test {t}" for t in tests)
        + " |",
        "|---|---|---|---|" + "---|" * len(tests),
    ]
    budgets = [({"epochs": e}, f"{e} epochs", "last") for e in args.epochs]
    budgets.append(({"epochs": max(args.epochs), "select": "val"}, f"{max(args.epochs)} epochs",
                    "best val"))  # fmt: skip
    for fam in args.families:
        ov, _, rules = q.FAMILIES[fam]
        for base, budget, rule in budgets:
            row = q.one_run(
                fam, ov, args.margin, args.train_set, args.seed, rules[:1], feats, base, None
            )
            cells = " | ".join(f"{row['tests'][t][rules[0]]['rsum']:.1f}" for t in tests)
            line = (
                f"| {fam} | {budget} | {rule} ({row['best_epoch']}) | {row['val_rsum']:.1f} | "
                f"{cells} |"
            )
            lines.append(line)
            print(line, flush=True)
    atomic_write_text("\n".join(lines) + "\n", args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
