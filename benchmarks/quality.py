"""Quality study: does PICO align better than the best baseline? (docs/results.md)

Every method shares encoders (EfficientNet-Lite0 + MiniLM, frozen, cached features), data,
seeds and the product's default recipe (trained until validation levels off: epochs=auto, which
is 20 with one caption per image and 6 on scenes' five, lr steps at 60% and 85%, the last
epoch scored). Training sets: twemoji, noto-emoji, tuxpaint
and two protocols of the compositional ``scenes`` set; test sets: each one's test split and
the style-shift partners (train Twemoji → test Noto and the reverse; scenes drawn with Noto).

Fair comparison (METHOD.md §6b–7): every scorer (global, gpo, fine_grained) has a baseline
and a PICO family; every family tunes margins 0.2, 0.8 and 1.2, picked on the validation
rSum of the first seed (or the mean of the first N, ``--tune-seeds N``), and the other seeds
run at that margin. The headlines compare the best PICO family and the default PICO with
the *best* tuned baseline of every scorer (both picked on validation). Each trained PICO
model is scored both ways (plain and weighted).
What runs (sets, families, plans) is data in ``quality_plan.py``; the decisions (margins,
best baseline, report) are pure functions of the rows, in ``quality_rows.py``. Results are
appended to a JSONL file as runs finish, so an interrupted study resumes where it stopped
(``--resume``); ``--families`` runs a subset first (the costly ones, say) and a later
``--resume`` adds the rest.
Runs use MKL's reproducible AVX2 math by default (``--math avx2-strict``: the same bits at
any thread count; ``benchmarks/rounding.py`` shows why), and every row records its math.
``--set KEY=VALUE`` changes the recipe for every family alike (the text encoder fine-tuned,
a speed option); every row records it, and a study of one recipe is never resumed or
confirmed with another.

    python benchmarks/quality.py                 # the full study
    python benchmarks/quality.py --core          # baselines + default PICO on every scorer
    python benchmarks/quality.py --quick         # smoke run (minutes)
    python benchmarks/quality.py --report-only   # re-aggregate benchmarks/results/quality.jsonl
    python benchmarks/quality.py --core --set model.finetune_text=true \
        --results ft.jsonl --report ft.md --plots ft-plots   # another recipe, its own files
    python benchmarks/quality.py --confirm study.jsonl --seeds 100 101 102 --with-default \
        --train-sets twemoji --results c.jsonl --report c.md   # fresh seeds, picks fixed
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from picoalign.config import load_config
from picoalign.evaluation import evaluate
from picoalign.features import FeatureSet, dataset_features
from picoalign.fileio import atomic_write_text
from picoalign.model import PicoAligner
from picoalign.numerics import STRICT_MATH_ENV, mkl_branch, strict_math
from picoalign.training.derived import split_sizes
from picoalign.training.devices import numerics
from picoalign.training.distributed import state_digest
from picoalign.training.loop import train
from picoalign.training.schedule import resolve_epochs
from quality_args import build_parser, default_paths
from quality_outputs import write_outputs
from quality_plan import (
    BASE,
    CORE,
    FAMILIES,
    RECIPE_FIXED,
    TRAIN_SETS,
    ablation_plan,
    confirm_plan,
    confirm_tune,
    history_path,
    plan,
    recipe_of,
    run_id,
)
from quality_rows import (
    DEFAULT_PICO,
    check_budget,
    check_math,
    check_recipe,
    pick_margin,
    report,
)


def evaluate_rules(model: PicoAligner, fs: FeatureSet, rules: list[str]) -> dict[str, Any]:
    """Test metrics of one trained model under each scoring rule (a baseline has only one)."""
    if model.config.method != "pico":
        return {rule: evaluate(model, fs) for rule in rules}
    return {rule: evaluate(model, fs, rule=rule) for rule in rules}


def weights_sha256(model: torch.nn.Module) -> str:
    """A fingerprint of a trained model's bits (the first 16 hex digits of ``state_digest``):
    two rows with the same one scored the same model (``benchmarks/rounding.py``)."""
    return state_digest(model)[:16]


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
        model = PicoAligner.load(Path(tmp))  # the selected epoch: the last (TrainConfig.select)
    tests = {}
    for test_set in TRAIN_SETS[train_set]:
        tests[test_set] = evaluate_rules(model, feats[test_set].split("test"), rules)
    if plot_dir is not None and seed == 0:
        path = history_path(plot_dir, family, margin, train_set)
        atomic_write_text(json.dumps(result.history), path)
    return {
        "id": run_id(family, margin, train_set, seed),
        "family": family,
        "margin": margin,
        "train_set": train_set,
        "seed": seed,
        "val_rsum": result.best.get("rsum"),
        "best_epoch": result.best.get("epoch"),
        "epochs": result.config.epochs if result.config is not None else None,
        "seconds": round(seconds, 1),
        **({"recipe": recipe_of(base)} if recipe_of(base) else {}),
        **numerics_of_row(),
        "weights_sha256": weights_sha256(model),
        # the training set's frozen features: tells a machine's encoders from its training
        "features_sha256": feats[train_set].digest()[:16],
        "features_math": feats[train_set].math_mode(),
        "tests": tests,
        "p_mean": float(model.pico.p.mean()),
        "omega_spread_last": result.history[-1].get("omega_spread"),
    }


def planned_epochs(base: dict[str, Any], fs: FeatureSet) -> int:
    """How many epochs every run on ``fs`` trains: ``base``'s, or the recipe's ``auto``."""
    sizes = split_sizes(fs)["train"]  # counted: a split would copy the features
    return int(resolve_epochs(load_config(None, base), sizes["images"], sizes["captions"]).epochs)


def numerics_of_row() -> dict[str, Any]:
    """The math a row was computed with (``training.devices.numerics``, CPU)."""
    info = numerics(torch.device("cpu"))
    return {k: info[k] for k in ("math", "mkl", "cpu_capability", "threads")}


def _first_of_each_split(fs: FeatureSet, n: int) -> list[int]:
    rows = [[i for i, x in enumerate(fs.image_splits) if x == s] for s in ("train", "val", "test")]
    return [i for r in rows for i in r[:n]]


def _clock(seconds: float) -> str:
    return f"{int(seconds // 3600)}:{int(seconds % 3600 // 60):02d}:{int(seconds % 60):02d}"


def main(argv: list[str] | None = None) -> int:
    ap = build_parser(__doc__)
    defaults = default_paths()
    args = ap.parse_args(argv)
    n_tune = args.tune_seeds
    if n_tune is not None and (n_tune < 1 or (args.confirm is None and n_tune > len(args.seeds))):
        ap.error(f"--tune-seeds must be between 1 and the {len(args.seeds)} --seeds given")
    if args.with_default and args.confirm is None:
        ap.error("--with-default goes with --confirm (a study runs the default PICO anyway)")
    base = dict(BASE)
    # the files a study of another recipe must name itself; a confirmation draws no plots
    own = ("results", "report") if args.confirm is not None else ("results", "report", "plots")

    def need_own_files(flag: str) -> None:
        for name in own:
            if getattr(args, name) is None:
                ap.error(f"{flag} changes the recipe: give its own --{name}")

    recipe = dict(args.recipe)
    clash = sorted(set(recipe) & RECIPE_FIXED)
    if clash:
        ap.error(f"--set {clash[0]}: the study sets it per run or by its own flag")
    if recipe:
        need_own_files("--set")
        try:  # a typo or a wrong type is refused before any work
            load_config(None, {**recipe, "out": "unused"})
        except ValueError as err:
            ap.error(f"--set: {err}")
        base.update(recipe)
    if args.epochs is not None:  # a budget probe must not mix with the study's own files
        if args.epochs < 1:
            ap.error(f"--epochs must be >= 1, got {args.epochs}")
        need_own_files("--epochs")
        base["epochs"] = args.epochs
    given = {name for name in defaults if getattr(args, name) is not None}  # used as given
    for name, path in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, path)
    if args.quick:
        base.update(epochs=2, lr_steps=[], pico_warmup_epochs=0)
        args.seeds, args.train_sets = args.seeds[:1], args.train_sets[:1]
        n_tune = 1
        if "results" not in given:
            args.results = args.results.with_name("quality-quick.jsonl")
        if "report" not in given:
            args.report = args.report.with_name("quality-quick.md")
    # seed 0's histories and the figures: a study's, not a smoke run's or a confirmation's
    plot_dir = None if args.quick or args.confirm is not None else args.plots
    if args.confirm is not None and "results" not in given:
        args.results = args.results.with_name("quality-confirm.jsonl")
        if "report" not in given:
            args.report = args.report.with_name("quality-confirm.md")
    if args.confirm is not None and args.results.resolve() == args.confirm.resolve():
        ap.error("--results must not be the study being confirmed (--confirm)")
    study, study_tune = [], {}  # a confirmation: the study's rows, and its tuning seeds per set
    if args.confirm is not None:
        study = [json.loads(x) for x in args.confirm.read_text().splitlines() if x]
        for ts in args.train_sets:
            if args.report_only and not any(r["train_set"] == ts for r in study):
                continue  # a report need not cover every default training set
            try:
                study_tune[ts] = confirm_tune(study, ts, n_tune)
            except ValueError as err:
                ap.error(f"--confirm {args.confirm}: {err}")
        if len({len(t) for t in study_tune.values()}) > 1:
            ap.error(f"--confirm {args.confirm}: its training sets were tuned on different "
                     "numbers of seeds; confirm them one --train-sets at a time")  # fmt: skip
        n_tune = len(next(iter(study_tune.values()), [0]))
    elif n_tune is None:
        n_tune = min(3, len(args.seeds))
    if not args.report_only and args.math == "avx2-strict" and not strict_math():
        if argv is not None:  # called as a function: the environment is the caller's
            ap.error(
                "--math avx2-strict needs MKL_CBWR=AVX2,STRICT in the environment before "
                "Python starts (or --math native)"
            )
        print("quality.py: restarting with MKL_CBWR=AVX2,STRICT (--math avx2-strict)", flush=True)
        os.execve(sys.executable, sys.orig_argv, {**os.environ, **STRICT_MATH_ENV})
    if not args.report_only and strict_math() and not mkl_branch().startswith("avx2"):
        print(
            f"quality.py: MKL runs its {mkl_branch()} path here, not AVX2 (it honours "
            "MKL_CBWR=AVX2 on Intel CPUs only): runs give the same bits at any thread count on "
            "this machine, not the bits of rows computed on an Intel CPU (docs/results.md, "
            '"Rounding")',
            flush=True,
        )
    if args.report_only and not args.results.is_file():  # else an empty report, exit 0
        ap.error(f"--results {args.results}: no such file (--report-only reads a study's rows)")
    if args.report.is_dir():
        ap.error(f"--report {args.report}: is a folder; give the report's file name")
    args.results.parent.mkdir(parents=True, exist_ok=True)
    done = {}
    if args.results.exists() and (args.resume or args.report_only):
        for n, line in enumerate(args.results.read_text().splitlines(), 1):
            try:
                row = json.loads(line)
                done[row["id"]] = row
            except (ValueError, KeyError, TypeError) as err:
                ap.error(f"{args.results} line {n}: not a row of this study ({err})")
    elif args.results.exists():  # a study's rows are never lost silently
        if not args.overwrite:
            ap.error(f"{args.results} exists: --resume to continue it, --overwrite to start over")
        args.results.unlink()
    if args.report_only and not done:
        ap.error(f"--results {args.results}: holds no rows (nothing to report)")
    if args.report.exists() and not (args.resume or args.report_only or args.overwrite):
        # a new study's report replaces no file of the user's (a resumed one rewrites its own)
        ap.error(f"{args.report} exists: --overwrite to replace it, or give another --report")
    if not args.report_only:
        torch.set_num_threads(torch.get_num_threads())
        start = time.perf_counter()  # the study's wall time includes loading cached features
        needed = {t for ts in args.train_sets for t in TRAIN_SETS[ts]}
        feats = {name: dataset_features(name, progress=True) for name in sorted(needed)}
        if args.quick:  # a few hundred images of each split
            feats = {k: v.subset(_first_of_each_split(v, 120)) for k, v in feats.items()}
        families = [f for f in FAMILIES if not args.core or f in CORE]
        if args.families:
            families = [f for f in args.families if f in families]
        if args.quick:
            families = ["fine_grained", DEFAULT_PICO]
        tune, rest = args.seeds[:n_tune], args.seeds[n_tune:]
        budget = {ts: planned_epochs(base, feats[ts]) for ts in args.train_sets}

        def run_all(todo: list[tuple]) -> None:
            why = check_math(list(done.values()), args.math, args.results, mkl_branch())
            why = why or check_recipe(list(done.values()), recipe_of(base), args.results)
            if why:  # nor math modes, nor recipes
                ap.error(why)
            for ts in {p[3] for p in todo}:  # a resumed study must not mix budgets
                ids = {run_id(p[0], p[2], p[3], p[4]) for p in todo if p[3] == ts}
                why = check_budget([done[i] for i in ids & set(done)], budget[ts], args.results)
                if why:
                    ap.error(why)
            todo = [p for p in todo if run_id(p[0], p[2], p[3], p[4]) not in done]
            print(f"{len(todo)} runs to do ({len(done)} already done)", flush=True)
            for i, (fam, ov, margin, ts, seed, rules) in enumerate(todo, 1):
                row = one_run(fam, ov, margin, ts, seed, rules, feats, base, plot_dir)
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

        # stage 1: every margin on the tuning seed; stage 2: the other seeds at the margin
        # validation picked (the same rule for every family)
        if args.confirm is not None:  # choices fixed by the study: nothing is tuned here
            for ts in args.train_sets:  # its picks were made at this budget, or not at all
                why = check_budget([r for r in study if r["train_set"] == ts], budget[ts],
                                   args.confirm)  # fmt: skip
                why = why or check_recipe(study, recipe_of(base), args.confirm)
                if why:
                    ap.error(why)
                try:
                    runs = confirm_plan(study, ts, args.seeds, len(study_tune[ts]),
                                        args.with_default)  # fmt: skip
                except ValueError as err:
                    ap.error(f"--confirm {args.confirm}: {err}")
                run_all(runs)
        else:  # one training set at a time, so that a cut-short study has whole sets
            for ts in args.train_sets:
                grid = {f: args.margins or FAMILIES[f][1] for f in families}
                every = {(f, ts): grid[f][-1:] if args.quick else grid[f]
                         for f in families}  # fmt: skip
                run_all(plan(families, every, tune, [ts]))
                rows = list(done.values())
                chosen = {k: [pick_margin(rows, *k, tune)] for k in every}
                run_all(plan(families, chosen, rest, [ts]))
            if not args.no_ablations and not args.core and not args.quick:
                run_all(ablation_plan(args.ablation_seeds, args.train_sets[0]))
        print(f"study wall time: {_clock(time.perf_counter() - start)}")
    confirms = None if args.confirm is None else args.confirm.name
    # a confirmation's rows hold one margin per family: its first seed "picks" that margin
    tune = args.seeds[:n_tune] if args.confirm is None else args.seeds[:1]
    text = report(list(done.values()), tune, confirms, n_tune)
    plots = None if plot_dir is None else (list(done.values()), args.train_sets, tune, plot_dir)
    try:  # --report-only replaces no file it would change unless --overwrite; a study does
        changed = write_outputs(
            args.report, text, overwrite=args.overwrite or not args.report_only, plots=plots
        )
    except FileExistsError as err:
        ap.error(str(err))
    print(text)
    print(f"rows: {args.results}\nreport: {args.report}")
    print(f"written: {', '.join(map(str, changed)) or 'nothing (each file already held this)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
