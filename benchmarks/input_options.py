"""Input options (METHOD.md §6b recipe, issue 12): what feature standardisation, a caption
prompt and keeping the text encoder's special tokens do to the baseline and to PICO.

The options are picked on the *baseline's* validation rSum (the best baseline of the study's
seed-0 Twemoji runs is the mean-pooled ``global`` scorer; its PICO arm is ``pico-global``),
and the study then uses them for every method alike. Each configuration is one seed of the
product recipe (20 epochs, margin 0.8); test rSum is printed for the record, never used to
pick. Writes ``benchmarks/results/input_options.{jsonl,md}``.

    python benchmarks/input_options.py                     # Twemoji, both arms (≈ 6 min)
    python benchmarks/input_options.py --train-set tuxpaint --prompt "a drawing of {}"
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import quality as q
from _common import add_out_arguments, refuse_to_overwrite
from picoalign.config import load_config
from picoalign.features import dataset_features
from picoalign.fileio import atomic_write_text

ROOT = Path(__file__).resolve().parent


def option_sets(prompt: str) -> dict[str, dict[str, Any]]:
    """Each option alone, then all of them together."""
    return {
        "none": {},
        "standardize": {"model.standardize": True},
        "special-tokens": {"model.text_special_tokens": True},
        f"prompt '{prompt}'": {"model.prompt": prompt},
        "all": {
            "model.standardize": True,
            "model.text_special_tokens": True,
            "model.prompt": prompt,
        },
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--train-set", default="twemoji", choices=list(q.TRAIN_SETS))
    ap.add_argument("--prompt", default="an emoji of {}")
    ap.add_argument("--families", nargs="+", default=["global", "pico-global"])
    ap.add_argument("--margin", type=float, default=0.8)
    ap.add_argument("--seed", type=int, default=0)
    add_out_arguments(ap, ROOT / "results" / "input_options", "the rows (.jsonl) and table (.md)")
    args = ap.parse_args(argv)
    refuse_to_overwrite([args.out.with_suffix(x) for x in (".jsonl", ".md")], args.overwrite)
    rows = []
    for name, opts in option_sets(args.prompt).items():
        enc = load_config(None, opts).model.make_text_encoder
        feats = {
            t: dataset_features(t, text_encoder=enc, progress=False)
            for t in q.TRAIN_SETS[args.train_set]
        }
        for fam in args.families:
            ov, _, rules = q.FAMILIES[fam]
            row = q.one_run(
                fam, ov, args.margin, args.train_set, args.seed, rules[:1], feats, opts, None
            )
            row["options"] = name
            rows.append(row)
            tests = {t: round(v[rules[0]]["rsum"], 1) for t, v in row["tests"].items()}
            print(f"{name:28s} {fam:14s} val {row['val_rsum']:.1f} test {tests}", flush=True)
    atomic_write_text("".join(json.dumps(r) + "\n" for r in rows), args.out.with_suffix(".jsonl"))
    tests = list(rows[0]["tests"])
    lines = [
        f"train {args.train_set}, margin {args.margin}, seed {args.seed}; "
        "val rSum picks (baseline arm), test rSum for the record\n",
        "| options | family | val rSum | " + " | ".join(f"test {t}" for t in tests) + " |",
        "|---|---|---|" + "---|" * len(tests),
    ]
    for r in rows:
        cells = [f"{next(iter(r['tests'][t].values()))['rsum']:.1f}" for t in tests]
        lines.append(
            f"| {r['options']} | {r['family']} | {r['val_rsum']:.1f} | " + " | ".join(cells) + " |"
        )
    atomic_write_text("\n".join(lines) + "\n", args.out.with_suffix(".md"))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
