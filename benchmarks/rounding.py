"""How much of a study's result is float rounding? The same run at 1 and 2 threads, native and
avx2-strict math (docs/results.md, "Rounding").

One configuration (the study's recipe, ``--family`` at ``--margin`` on ``--data``, seed 0) is
trained four times, each in its own process, under {native, MKL_CBWR=AVX2,STRICT} ×
{1, 2 threads}. Each run prints its validation and test rSum and a SHA-256 of its trained
weights: equal hashes mean the same bits. The config, data and seed are the same in all
four, so any difference is the GEMMs' rounding, grown over training.

    python benchmarks/rounding.py                       # fine_grained m=0.8 on twemoji
    python benchmarks/rounding.py --family pico-fine_grained --data tuxpaint
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

import quality  # this script's sibling (its folder is on sys.path when run as a script)
from _common import add_out_arguments, refuse_to_overwrite
from picoalign.features import dataset_features
from picoalign.fileio import atomic_write_text
from picoalign.numerics import STRICT_MATH_ENV
from picoalign.training.devices import numerics

ROOT = Path(__file__).resolve().parent


def worker(family: str, margin: float, data: str, threads: int) -> dict:
    """One study run (``quality.one_run``) in this process, its environment already set by
    the parent."""
    torch.set_num_threads(threads)
    feats = {name: dataset_features(name, progress=False) for name in quality.TRAIN_SETS[data]}
    overrides, _, rules = quality.FAMILIES[family]
    row = quality.one_run(family, overrides, margin, data, 0, rules, feats, {}, None)
    return {
        **numerics(torch.device("cpu")),  # the row's math, with device and torch version
        "val_rsum": row["val_rsum"],
        "test_rsum": row["tests"][data][rules[0]]["rsum"],  # plain: how PICO models are scored
        "weights_sha256": row["weights_sha256"],
        "features_sha256": row["features_sha256"],
        "features_math": row["features_math"],
        "seconds": row["seconds"],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--family", default="fine_grained", choices=list(quality.FAMILIES))
    ap.add_argument("--margin", type=float, default=0.8)
    ap.add_argument(
        "--data", default="twemoji", choices=list(quality.TRAIN_SETS), help="its test split scored"
    )
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    add_out_arguments(ap, ROOT / "results" / "rounding.json", "the runs, as JSON")
    ap.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker is not None:
        print(json.dumps(worker(args.family, args.margin, args.data, args.worker)))
        return 0
    refuse_to_overwrite([args.out], args.overwrite)
    rows = []
    for mode in ("native", "avx2-strict"):
        env = {k: v for k, v in os.environ.items() if k not in STRICT_MATH_ENV}
        if mode == "avx2-strict":
            env.update(STRICT_MATH_ENV)
        for threads in args.threads:
            cmd = [sys.executable, __file__, "--family", args.family, "--margin",
                   str(args.margin), "--data", args.data, "--worker", str(threads)]  # fmt: skip
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                sys.stderr.write(done.stderr)
                return done.returncode
            row = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(
                f"{row['math']:12s} (MKL {row['mkl']}) {threads} thread(s): val "
                f"{row['val_rsum']:.2f} test "
                f"{row['test_rsum']:.2f} weights {row['weights_sha256']} features "
                f"{row['features_sha256']} ({row['features_math']} cache, {row['seconds']:.0f}s)",
                flush=True,
            )
    by_mode = {
        mode: {r["weights_sha256"] for r in rows if r["math"] == mode}
        for mode in ("native", "avx2-strict")
    }
    for mode, hashes in by_mode.items():
        vals = [r["val_rsum"] for r in rows if r["math"] == mode]
        same = "the same bits" if len(hashes) == 1 else f"{len(hashes)} different models"
        spread = max(vals) - min(vals)
        print(f"{mode}: {same} at threads {args.threads}; val rSum range {spread:.2f}")
    setup = {"family": args.family, "margin": args.margin, "data": args.data}
    atomic_write_text(json.dumps({**setup, "runs": rows}, indent=2) + "\n", args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
