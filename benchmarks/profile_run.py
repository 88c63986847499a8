"""Where one quality-study run's time goes: one ``benchmarks/quality.py`` run under cProfile.

Prints the run's seconds, the seconds spent in the max-mean's forward and backward
(``core.maxmean.MaxMean``), the GEMM work they do (from the batch shapes), and, side by side
in the same process, the rate of one plain fp32 GEMM of the same kind, so that one can tell
whether the fine-grained scorer is bound by arithmetic or by something around it. Run it in
the study's math mode (``MKL_CBWR=AVX2,STRICT``, what ``quality.py`` sets) to read the
study's figures; without it, native math.

    MKL_CBWR=AVX2,STRICT python benchmarks/profile_run.py            # scenes, fine-grained
    python benchmarks/profile_run.py --family global --data twemoji
    python benchmarks/profile_run.py --rows benchmarks/results/quality-core.jsonl   # study's time
    python benchmarks/profile_run.py --compare trim_padding sparse_backward  # speed options
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import sys
import time
from pathlib import Path

import torch

import quality  # this script's sibling (its folder is on sys.path when run as a script)
from picoalign.config import TrainConfig
from picoalign.features import dataset_features
from picoalign.training.devices import numerics


def seconds_in(stats: pstats.Stats, path_part: str, name: str) -> float:
    """Cumulative seconds of the function ``name`` in a file whose path contains
    ``path_part`` (0 when it did not run)."""
    return sum(v[3] for (file, _, fn), v in stats.stats.items() if path_part in file and fn == name)


def gemm_rate(m: int, k: int, n: int, repeats: int = 20) -> float:
    """GFLOP/s of an (m×k)·(k×n) fp32 GEMM, best of ``repeats``."""
    a, b = torch.randn(m, k), torch.randn(k, n)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * m * k * n / best / 1e9


def time_shares(path: Path) -> int:
    """Runs, mean seconds and share of the total run time of every (training set, family) in
    a study's rows (``quality.py --results``), largest share first."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    groups: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        groups.setdefault((r["train_set"], r["family"]), []).append(r["seconds"])
    total = sum(r["seconds"] for r in rows)
    print(f"{len(rows)} runs, {total / 60:.1f} min of run time in {path}")
    for (ts, fam), secs in sorted(groups.items(), key=lambda kv: -sum(kv[1])):
        print(
            f"{ts:26s} {fam:18s} {len(secs):3d} runs, {sum(secs) / len(secs):6.1f} s a run "
            f"({min(secs):.1f}-{max(secs):.1f}), {100 * sum(secs) / total:5.1f} %"
        )
    return 0


SPEED_OPTIONS = ("trim_padding", "sparse_backward")
"""The TrainConfig speed options ``--compare`` can time: same training up to rounding."""


def compare_options(
    args: argparse.Namespace, overrides: dict, rules: list[str], feats: dict, options: list[str]
) -> int:
    """The same run with every option off, each one on, and (for several) all on, side by
    side in this process: seconds of training, the ratio to the all-off run, and validation /
    test rSum (equal up to rounding if the options keep the training the same)."""
    settings = (
        [{}] + [{o: True} for o in options] + ([dict.fromkeys(options, True)] * (len(options) > 1))
    )
    base = None
    for on in settings:
        chosen = {o: o in on for o in options}
        row = quality.one_run(
            args.family, overrides, args.margin, args.data, args.seed, rules, feats, chosen, None
        )
        base = base or row["seconds"]
        test = row["tests"][args.data][rules[0]]["rsum"]
        label = " + ".join(on) or "all off"
        print(
            f"{label:30s}: {row['seconds']:6.1f} s ({row['seconds'] / base:.2f}x), val rSum "
            f"{row['val_rsum']:.2f}, test rSum {test:.2f} ({row['math']} math, MKL {row['mkl']})",
            flush=True,
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--family", default="fine_grained", choices=list(quality.FAMILIES))
    ap.add_argument("--data", default="scenes:twemoji:size=1400", choices=list(quality.TRAIN_SETS))
    ap.add_argument("--margin", type=float, default=1.2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--compare",
        nargs="+",
        choices=SPEED_OPTIONS,
        default=None,
        metavar="OPTION",
        help="instead of profiling: time the run with these TrainConfig options off, each on, "
        "and all on, side by side in this process, with their time ratios and rSum "
        f"({', '.join(SPEED_OPTIONS)})",
    )
    ap.add_argument(
        "--trim-padding",
        action="store_true",
        help="the same as --compare trim_padding",
    )
    ap.add_argument(
        "--rows",
        type=Path,
        default=None,
        help="instead of running: where a study's run time went, from its rows (JSONL)",
    )
    args = ap.parse_args(argv)
    if args.rows is not None:
        return time_shares(args.rows)
    feats = {
        s: dataset_features(s, progress=False) for s in {args.data, *quality.TRAIN_SETS[args.data]}
    }
    overrides, _, rules = quality.FAMILIES[args.family]
    if args.trim_padding or args.compare:
        options = list(
            dict.fromkeys([*(args.compare or []), *(["trim_padding"] * args.trim_padding)])
        )
        return compare_options(args, overrides, rules, feats, options)
    prof = cProfile.Profile()
    prof.enable()
    row = quality.one_run(
        args.family, overrides, args.margin, args.data, args.seed, rules, feats, {}, None
    )
    prof.disable()
    stats = pstats.Stats(prof)
    total = seconds_in(stats, "benchmarks/quality.py", "one_run")
    train = seconds_in(stats, "training/loop.py", "train")
    fwd = seconds_in(stats, "core/maxmean.py", "forward")
    bwd = seconds_in(stats, "core/maxmean.py", "backward")
    fs = feats[args.data].split("train")
    defaults = TrainConfig()  # what one_run trains with: no batch or width override
    b, d = defaults.batch_size, defaults.model.embed_dim
    n_v, n_t = fs.images.tokens.shape[1], fs.texts.tokens.shape[1]
    steps = row["epochs"] * -(-fs.n_captions // b)
    gflop = steps * 3 * 2 * b * n_v * n_t * b * d / 1e9  # forward GEMM + two in backward
    info = numerics(torch.device("cpu"))
    print(
        f"{args.family} m{args.margin} on {args.data}, seed {args.seed}: {info['math']} math, "
        f"{info['cpu_capability']}, {info['threads']} thread(s)"
    )
    print(
        f"run {total:.1f} s (training {train:.1f} s, {steps} steps of {b}); "
        f"val rSum {row['val_rsum']:.2f}"
    )
    if fwd or bwd:
        print(
            f"max-mean forward {fwd:.1f} s + backward {bwd:.1f} s = {fwd + bwd:.1f} s "
            f"({100 * (fwd + bwd) / total:.0f}% of the run)"
        )
        print(
            f"their GEMMs: {gflop:.0f} GFLOP (B {b}, {n_v} patches, {n_t} word slots of which "
            f"{fs.texts.mask.sum(1).float().mean():.1f} real on average, D {d}) "
            f"= {gflop / (fwd + bwd):.0f} GFLOP/s over the max-mean's time"
        )
        rate = gemm_rate(b * n_v, d, n_t * b)
        print(f"a plain GEMM of the forward's shape, same process: {rate:.0f} GFLOP/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
