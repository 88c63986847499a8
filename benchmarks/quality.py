"""Quality study: does PICO align better than the same model without it? (docs/results.md)

Every method shares encoders (EfficientNet-Lite0 + MiniLM, frozen, cached features), data,
seeds and budget. Training sets: twemoji, noto-emoji, tuxpaint; test sets: each one's test
split (concepts never seen in training) and, for the emoji styles, the *other* style's test
split (style shift: train Twemoji → test Noto and the reverse).

Fair comparison (METHOD.md §6b–7): the baseline gets at least PICO's tuning budget (margins
0.2, 0.8 and 1.2; PICO 0.8 and 1.2), every family's margin is picked on the validation split
(mean over seeds), and each trained PICO
model is scored both ways (plain and weighted) so a gain that only a margin or a rescaling
reproduces is visible as such. Results are appended to a JSONL file as runs finish, so an
interrupted study resumes where it stopped (``--resume``).

    python benchmarks/quality.py                 # the full study (126 runs, 1 h 14 min measured)
    python benchmarks/quality.py --core          # the first study only (90 runs, ≈ 45 min)
    python benchmarks/quality.py --quick         # smoke run (< 5 min)
    python benchmarks/quality.py --report-only   # re-aggregate benchmarks/results/quality.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from picoalign.cli.plots import plot_training
from picoalign.config import load_config
from picoalign.evaluation import evaluate
from picoalign.features import FeatureSet, dataset_features
from picoalign.model import PicoAligner
from picoalign.training.loop import train

ROOT = Path(__file__).resolve().parent
TRAIN_SETS = {
    "twemoji": ["twemoji", "noto-emoji"],
    "noto-emoji": ["noto-emoji", "twemoji"],
    "tuxpaint": ["tuxpaint"],
}
BASE: dict[str, Any] = {"epochs": 6, "lr_steps": [4], "batch_size": 128, "lr": 1e-3}
# Every family names its reading (and λ) explicitly: a later change of picoalign's defaults
# must not silently change what a family measures.
PICO: dict[str, Any] = {
    "model.method": "pico",
    "model.pico.feedback_size": 32,
    "model.pico.reading": "global",
}

# name -> (training overrides, margins to tune over, evaluation rules)
# Evaluation rules: "plain" (p ≡ 1), "weighted" (the model's own p / p(V,T)), "raw" (global p
# without renormalisation, reading A only).
FAMILIES: dict[str, tuple[dict[str, Any], list[float], list[str]]] = {
    "global": ({"model.method": "global"}, [0.2], ["plain"]),
    "baseline": ({"model.method": "baseline"}, [0.2, 0.8, 1.2], ["plain"]),
    "pico-A": ({**PICO}, [0.8, 1.2], ["plain", "weighted", "raw"]),
    "pico-B": (
        {**PICO, "model.pico.reading": "pair", "model.pico.lam": 0.5},
        [0.8, 1.2],
        ["plain", "weighted"],
    ),
    # λ of reading B (p(V,T) = λ p̃(V,T) + (1−λ) prior) picked on validation at margin 0.8
    **{
        f"pico-B-lam{lam}": (
            {**PICO, "model.pico.reading": "pair", "model.pico.lam": lam},
            [0.8],
            ["plain", "weighted"],
        )
        for lam in (0.25, 1.0)
    },
}
# Ablations of METHOD.md and sweeps of our constants on pico-A (margin 0.8), Twemoji only,
# scored with each rule.
ABLATIONS: dict[str, dict[str, Any]] = {
    "abl-batch-only-p": {"model.pico.bank_size": 1},
    "abl-uniform-bank": {"model.pico.feedback": False},
    "abl-feedback-current-batch": {"model.pico.feedback_source": "batch"},
    "abl-magnitude": {"model.pico.estimator": "magnitude"},
    "abl-all-positives": {"model.pico.positives": "all"},
    "abl-raw-p-training": {"model.pico.renormalize": False},
    # sweeps of the reconstructed constants (validation decides; Twemoji, 3 seeds)
    "sweep-tau0.25": {"model.pico.tau": 0.25},
    "sweep-tau4": {"model.pico.tau": 4.0},
    "sweep-K2": {"model.pico.bank_size": 2},
    "sweep-K32": {"model.pico.bank_size": 32},
    "sweep-momentum0.9": {"model.pico.momentum": 0.9},
    "sweep-B-prior-global": {
        "model.pico.reading": "pair",
        "model.pico.lam": 0.25,
        "model.pico.prior": "global",
    },
}


def run_id(family: str, margin: float, train_set: str, seed: int) -> str:
    return f"{family}|m{margin}|{train_set}|s{seed}"


def evaluate_rules(model: PicoAligner, fs: FeatureSet, rules: list[str]) -> dict[str, Any]:
    """Test metrics of one trained model under each scoring rule (a baseline has only one)."""
    if model.config.method != "pico":
        return {rule: evaluate(model, fs) for rule in rules}
    return {rule: evaluate(model, fs, rule=rule) for rule in rules}


def one_run(
    family: str,
    overrides: dict[str, Any],
    margin: float,
    train_set: str,
    seed: int,
    rules: list[str],
    feats: dict[str, FeatureSet],
    base: dict[str, Any],
    plot_dir: Path | None,
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="picoalign-quality-") as tmp:
        cfg = load_config(
            None,
            {
                **base,
                **overrides,
                "margin": margin,
                "seed": seed,
                "data": train_set,
                "progress": False,
                "out": tmp,
            },
        )
        t0 = time.perf_counter()
        result = train(cfg, feats[train_set])
        seconds = time.perf_counter() - t0
        model = PicoAligner.load(Path(tmp) / "best")  # best epoch by validation rSum
    tests = {}
    for test_set in TRAIN_SETS[train_set]:
        tests[test_set] = evaluate_rules(model, feats[test_set].split("test"), rules)
    if plot_dir is not None and seed == 0:
        (plot_dir / "histories").mkdir(parents=True, exist_ok=True)
        path = plot_dir / "histories" / f"{family}-m{margin}-{train_set}.json"
        path.write_text(json.dumps(result.history))
    return {
        "id": run_id(family, margin, train_set, seed),
        "family": family,
        "margin": margin,
        "train_set": train_set,
        "seed": seed,
        "val_rsum": result.best.get("rsum"),
        "best_epoch": result.best.get("epoch"),
        "seconds": round(seconds, 1),
        "tests": tests,
        "p_mean": float(model.pico.p.mean()),
        "omega_spread_last": result.history[-1].get("omega_spread"),
    }


def plan(
    quick: bool, seeds: list[int], train_sets: list[str], ablations: bool, ablation_seeds: list[int]
):
    for family, (overrides, margins, rules) in FAMILIES.items():
        for margin in margins[-1:] if quick else margins:
            for ts in train_sets:
                for seed in seeds:
                    yield family, overrides, margin, ts, seed, rules
    if ablations:
        for name, extra in ABLATIONS.items():
            for seed in ablation_seeds:
                yield (
                    name,
                    {**FAMILIES["pico-A"][0], **extra},
                    0.8,
                    train_sets[0],
                    seed,
                    ["plain", "weighted"],
                )


# ---------------------------------------------------------------------------- report
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571}


def _ms(xs: list[float]) -> str:
    if len(xs) < 2:  # one seed (or none): no spread to show
        return f"{xs[0]:.1f}" if xs else "–"
    return f"{statistics.mean(xs):.1f} ± {statistics.stdev(xs):.1f}"


def _paired(a: list[float], b: list[float]) -> str:
    d = [x - y for x, y in zip(a, b, strict=True)]
    if len(d) < 2:
        return f"{d[0]:+.1f}" if d else "–"
    half = T_975.get(len(d) - 1, 2.0) * statistics.stdev(d) / math.sqrt(len(d))
    m = statistics.mean(d)
    return f"{m:+.1f} [{m - half:+.1f}, {m + half:+.1f}]"


def report(rows: list[dict[str, Any]]) -> str:
    """Markdown: validation rSum of every configuration (what the defaults are picked on),
    then per test set each family at its validation-picked margin, with each scoring rule."""
    by = defaultdict(list)
    for r in rows:
        by[(r["family"], r["margin"], r["train_set"])].append(r)
    sets = sorted({t for _, _, t in by})
    lines = [
        "### validation rSum (mean ± std over seeds; selection is made on these)\n",
        "| configuration | " + " | ".join(sets) + " | seconds/run |",
        "|---|" + "---|" * (len(sets) + 1),
    ]
    for fam, margin in sorted({(f, m) for f, m, _ in by}):
        cells = [_ms([x["val_rsum"] for x in by.get((fam, margin, t), [])]) for t in sets]
        secs = [x["seconds"] for t in sets for x in by.get((fam, margin, t), [])]
        lines.append(
            f"| {fam} m={margin} | " + " | ".join(cells) + f" | {statistics.mean(secs):.0f} |"
        )
    test_sets = sorted({(r["train_set"], t) for r in rows for t in r["tests"]})
    for train_set, test_set in test_sets:
        shift = "in-style" if train_set == test_set else "style shift"
        lines += [
            f"\n### train {train_set} → test {test_set} ({shift})\n",
            "| method (margin picked on val) | rule | R@1 i→t | R@1 t→i | R@5 i→t | "
            "R@5 t→i | rSum | Δ rSum vs tuned baseline [95% CI] |",
            "|---|---|---|---|---|---|---|---|",
        ]
        picked = {}
        for fam in {f for f, _, t in by if t == train_set}:
            cands = [
                (statistics.mean(x["val_rsum"] for x in v), m)
                for (f, m, t), v in by.items()
                if f == fam and t == train_set
            ]
            picked[fam] = max(cands)[1]
        base_runs = sorted(
            by.get(("baseline", picked.get("baseline"), train_set), []), key=lambda r: r["seed"]
        )
        base_rsum = [r["tests"][test_set]["plain"]["rsum"] for r in base_runs]
        for fam in sorted(picked, key=lambda f: (not f.startswith(("global", "base")), f)):
            runs = sorted(by[(fam, picked[fam], train_set)], key=lambda r: r["seed"])
            for rule in runs[0]["tests"][test_set]:
                ms = [r["tests"][test_set][rule] for r in runs]
                rs = [m["rsum"] for m in ms]
                cell = (
                    _paired(rs, base_rsum)
                    if fam != "baseline" and len(rs) == len(base_rsum)
                    else ""
                )
                lines.append(
                    f"| {fam} (m={picked[fam]}) | {rule} | "
                    f"{_ms([m['i2t']['r1'] for m in ms])} | {_ms([m['t2i']['r1'] for m in ms])} | "
                    f"{_ms([m['i2t']['r5'] for m in ms])} | {_ms([m['t2i']['r5'] for m in ms])} | "
                    f"{_ms(rs)} | {cell} |"
                )
    return "\n".join(lines) + "\n"


def _clock(seconds: float) -> str:
    return f"{int(seconds // 3600)}:{int(seconds % 3600 // 60):02d}:{int(seconds % 60):02d}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="2 epochs, 1 seed, Twemoji only")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--train-sets", nargs="+", default=list(TRAIN_SETS))
    ap.add_argument("--no-ablations", action="store_true")
    ap.add_argument(
        "--core",
        action="store_true",
        help="only the first study (90 runs, ≈ 45 min): no λ families, no sweeps",
    )
    ap.add_argument("--ablation-seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--results", type=Path, default=ROOT / "results" / "quality.jsonl")
    ap.add_argument("--report", type=Path, default=ROOT / "results" / "quality.md")
    ap.add_argument("--plots", type=Path, default=ROOT.parent / "docs" / "img")
    ap.add_argument("--resume", action="store_true", help="skip runs already in --results")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args(argv)
    base = dict(BASE)
    if args.quick:
        base.update(epochs=2, lr_steps=[], pico_warmup_epochs=0)
        args.seeds, args.train_sets = args.seeds[:1], args.train_sets[:1]
        args.results = args.results.with_name("quality-quick.jsonl")
        args.report = args.report.with_name("quality-quick.md")
    args.results.parent.mkdir(parents=True, exist_ok=True)
    done = {}
    if args.results.exists() and (args.resume or args.report_only):
        for line in args.results.read_text().splitlines():
            row = json.loads(line)
            done[row["id"]] = row
    elif args.results.exists():
        args.results.unlink()
    if not args.report_only:
        torch.set_num_threads(torch.get_num_threads())
        start = time.perf_counter()  # the study's wall time includes loading cached features
        needed = {t for ts in args.train_sets for t in TRAIN_SETS[ts]}
        feats = {name: dataset_features(name, progress=True) for name in sorted(needed)}
        if args.quick:
            from picoalign.cli.demo import _small

            feats = {k: _small(v) for k, v in feats.items()}
        extra = ("pico-B-lam", "sweep-")  # the second session's additions
        todo = [
            p
            for p in plan(
                args.quick, args.seeds, args.train_sets, not args.no_ablations, args.ablation_seeds
            )
            if run_id(p[0], p[2], p[3], p[4]) not in done
            and not (args.core and p[0].startswith(extra))
        ]
        print(f"{len(todo)} runs to do ({len(done)} already done)", flush=True)
        for i, (fam, ov, margin, ts, seed, rules) in enumerate(todo, 1):
            row = one_run(
                fam, ov, margin, ts, seed, rules, feats, base, None if args.quick else args.plots
            )
            done[row["id"]] = row
            with args.results.open("a") as f:
                f.write(json.dumps(row) + "\n")
            main_rule = next(iter(row["tests"][ts]))
            print(
                f"[{i}/{len(todo)}] {row['id']:42s} val {row['val_rsum']:.1f} test "
                f"{row['tests'][ts][main_rule]['rsum']:.1f} ({row['seconds']:.0f}s; "
                f"elapsed {_clock(time.perf_counter() - start)})",
                flush=True,
            )
        print(f"study wall time: {_clock(time.perf_counter() - start)} for {len(todo)} runs")
    text = report(list(done.values()))
    args.report.write_text(text)
    print(text)
    if not args.quick and not args.report_only:
        for ts in args.train_sets:
            hist = {}
            for fam, m in (("baseline", 0.8), ("pico-A", 0.8), ("pico-B", 0.8)):
                p = args.plots / "histories" / f"{fam}-m{m}-{ts}.json"
                if p.exists():
                    hist[fam] = json.loads(p.read_text())
            if hist:
                plot_training(hist, args.plots / f"training-{ts}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
