"""What the quality study decides from its result rows (``benchmarks/quality.py`` writes
them): which margin each family keeps, which baseline and which PICO family are compared, the
paired interval the registered rule reads, the markdown report, and the checks that keep a
resumed study from mixing budgets or math modes.

Pure functions of the rows, with no training and no torch, so that every choice docs/results.md
reports can be tested on synthetic rows (tests/benchmarks/test_quality_study.py) and re-made from a
committed JSONL file alone (``quality.py --report-only``).
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

SCORERS = ("global", "gpo", "fine_grained")
DEFAULT_PICO = "pico-fine_grained"  # the product's default: PICO on the default scorer


Tune = int | Sequence[int]  # the tuning seed, or seeds whose mean validation decides


def tune_seeds(tune: Tune) -> tuple[int, ...]:
    """``tune`` as a tuple of seeds (one int: the study's historical one-seed rule)."""
    seeds = (tune,) if isinstance(tune, int) else tuple(tune)
    if not seeds:
        raise ValueError("no tuning seed given")
    return seeds


def tuned_by(tune: Tune) -> str:
    """How the reports name the tuning rule: ``seed 0`` or ``the mean of seeds 0, 1, 2``."""
    seeds = tune_seeds(tune)
    if len(seeds) == 1:
        return f"seed {seeds[0]}"
    return "the mean of seeds " + ", ".join(map(str, seeds))


def study_tune_seeds(rows: list[dict[str, Any]], train_set: str) -> tuple[int, ...]:
    """The seeds a study tuned on for ``train_set``, read from its rows: its smallest seeds
    on each of which every (family, margin) of the smallest seed ran. A seed past them ran
    only the picked margins, so it can neither pick nor be averaged in a pick: reading them
    back from the rows is what lets a confirmation re-make the study's picks without being
    told how it was run (a one-seed study gives one seed, ``--tune-seeds 3`` three)."""
    sub = [r for r in rows if r["train_set"] == train_set]
    seeds = sorted({r["seed"] for r in sub})
    if not seeds:
        raise ValueError(f"no runs on {train_set}")
    ran = defaultdict(set)
    for r in sub:
        ran[r["seed"]].add((r["family"], r["margin"]))
    n = 1
    while n < len(seeds) and ran[seeds[0]] <= ran[seeds[n]]:
        n += 1
    return tuple(seeds[:n])


def val_of(
    rows: list[dict[str, Any]], family: str, train_set: str, margin: float, tune: Tune
) -> float | None:
    """The validation rSum a (family, margin) is judged by: the mean over the tuning seeds,
    or None unless every tuning seed has run it (a half-tuned margin is not a candidate)."""
    seeds = tune_seeds(tune)
    vals = {
        r["seed"]: r["val_rsum"]
        for r in rows
        if (r["family"], r["train_set"], r["margin"]) == (family, train_set, margin)
        and r["seed"] in seeds
    }
    if len(vals) < len(seeds):
        return None
    return statistics.fmean(vals[s] for s in seeds)


def pick_margin(rows: list[dict[str, Any]], family: str, train_set: str, tune: Tune) -> float:
    """The margin with the best validation rSum of the tuning seed, or of the mean over the
    tuning seeds (the study's one rule for every family: tuned on validation, never on test).
    Ties go to the smaller margin. One seed on 127–201 validation images can pick a margin
    by one image (docs/results.md, Tux Paint); several seeds average that noise down."""
    margins = {r["margin"] for r in rows if r["family"] == family and r["train_set"] == train_set}
    cands = [
        (v, -m, m) for m in margins if (v := val_of(rows, family, train_set, m, tune)) is not None
    ]
    if not cands:
        raise ValueError(f"no tuning run of {family} on {train_set} ({tuned_by(tune)})")
    return max(cands)[2]


def best_of(rows: list[dict[str, Any]], families: list[str], train_set: str, tune: Tune) -> str:
    """Of ``families`` (each at its picked margin), the one with the best validation rSum of
    the tuning seed(s): how the study picks the best baseline and the best PICO alike."""

    def val(fam: str) -> float:
        m = pick_margin(rows, fam, train_set, tune)
        v = val_of(rows, fam, train_set, m, tune)
        assert v is not None  # pick_margin only returns margins every tuning seed ran
        return v

    present = [f for f in families if any(r["family"] == f for r in rows)]
    if not present:
        raise ValueError(f"none of {families} ran on {train_set}")
    return max(present, key=val)


def best_baseline(rows: list[dict[str, Any]], train_set: str, tune: Tune) -> str:
    """The scorer baseline PICO is compared with (picked on validation)."""
    return best_of(rows, list(SCORERS), train_set, tune)


def best_pico(rows: list[dict[str, Any]], train_set: str, tune: Tune) -> str:
    """The PICO-on-scorer family the study puts forward on this data (picked on validation
    exactly like the best baseline)."""
    return best_of(rows, [f"pico-{s}" for s in SCORERS], train_set, tune)


# ---------------------------------------------------------------------------- report
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571}


def mean_std(xs: list[float]) -> str:
    """``mean ± std`` over seeds as the tables print it (one seed: the value alone)."""
    if len(xs) < 2:  # one seed (or none): no spread to show
        return f"{xs[0]:.1f}" if xs else "–"
    return f"{statistics.mean(xs):.1f} ± {statistics.stdev(xs):.1f}"


def paired_ci(a: list[float], b: list[float]) -> str:
    """Mean of the per-seed differences a − b with its 95% t interval: seeds pair the two
    arms (same data, same split), so the interval reads the differences, not two spreads."""
    d = [x - y for x, y in zip(a, b, strict=True)]
    if len(d) < 2:
        return f"{d[0]:+.1f}" if d else "–"
    half = T_975.get(len(d) - 1, 2.0) * statistics.stdev(d) / math.sqrt(len(d))
    m = statistics.mean(d)
    return f"{m:+.1f} [{m - half:+.1f}, {m + half:+.1f}]"


def report(
    rows: list[dict[str, Any]],
    tune: Tune = 0,
    confirms: str | None = None,
    confirms_tuned_on: int = 1,
) -> str:
    """Markdown: the headline (default PICO against the best tuned baseline of every scorer,
    both picked on validation), the validation rSum of every configuration (what the margins
    are picked on), then per test set each family at its picked margin with each rule.
    ``confirms``: the tuning study a confirmation re-runs (its picks, not this run's seeds),
    whose ``confirms_tuned_on`` smallest seeds made those picks."""
    their = (
        "its tuning seed's validation"
        if confirms_tuned_on == 1
        else f"the mean validation of its {confirms_tuned_on} tuning seeds"
    )
    picked_by = (
        f"with the best validation rSum of {tuned_by(tune)}"
        if confirms is None
        else f"that the tuning run {confirms} picked on {their} (this "
        "confirmation re-runs only those)"
    )
    by = defaultdict(list)
    for r in rows:
        by[(r["family"], r["margin"], r["train_set"])].append(r)
    train_sets = sorted({t for _, _, t in by})
    picked = {}
    for fam, ts in {(f, t) for f, _, t in by}:  # one pick per (family, set), not per margin
        try:
            picked[(fam, ts)] = pick_margin(rows, fam, ts, tune)
        except ValueError:  # no margin of it ran on every tuning seed: not tuned, not shown
            continue

    def runs(fam: str, ts: str) -> list[dict[str, Any]]:
        return sorted(by.get((fam, picked.get((fam, ts)), ts), []), key=lambda r: r["seed"])

    def rsums(fam: str, ts: str, test: str, rule: str) -> list[float]:
        return [r["tests"][test][rule]["rsum"] for r in runs(fam, ts)]

    def headline(title: str, choose_pico) -> list[str]:
        out = [
            f"### headline: {title} vs the best tuned baseline\n",
            f"Each side is the family (scorer) and margin {picked_by}; PICO models are scored "
            "plain; Δ is paired by seed, with a 95% t interval.\n",
            "| train → test | best baseline (val-picked) | baseline rSum | PICO (val-picked) "
            "| PICO rSum | Δ rSum [95% CI] |",
            "|---|---|---|---|---|---|",
        ]
        for ts in train_sets:
            sub = [r for r in rows if r["train_set"] == ts]
            try:
                best, pico = best_baseline(sub, ts, tune), choose_pico(sub, ts)
            except (ValueError, StopIteration):
                continue
            if (pico, ts) not in picked:
                continue
            for test in runs(best, ts)[0]["tests"]:
                b, p = rsums(best, ts, test, "plain"), rsums(pico, ts, test, "plain")
                cell = paired_ci(p, b) if len(p) == len(b) else "seeds differ"
                out.append(
                    f"| {ts} → {test} | {best} (m={picked[(best, ts)]}) | {mean_std(b)} | "
                    f"{pico} (m={picked[(pico, ts)]}) | {mean_std(p)} | {cell} |"
                )
        return [*out, ""]

    lines = headline("the best PICO", lambda sub, ts: best_pico(sub, ts, tune))
    lines += headline(f"the default PICO ({DEFAULT_PICO})", lambda sub, ts: DEFAULT_PICO)
    maths = sorted(
        {
            (
                row_math(r),
                r.get("mkl", "?"),
                r.get("cpu_capability", "?"),
                str(r.get("threads", "?")),
            )
            for r in rows
        }
    )
    recipes = sorted({recipe_text(row_recipe(r)) for r in rows})
    lines.append(f"Recipe options (`--set`): {'; '.join(recipes)}.\n")
    lines.append(
        "Numerics (math mode, MKL path, CPU capability, threads): "
        + "; ".join(", ".join(m) for m in maths)
        + " (rows from before rows recorded them: native, ?).\n"
    )
    lines += [
        "\n### validation rSum (mean ± std over seeds; margins are picked on "
        + (f"{tuned_by(tune)})\n" if confirms is None else f"the tuning run {confirms})\n"),
        "| configuration | " + " | ".join(train_sets) + " | seconds/run |",
        "|---|" + "---|" * (len(train_sets) + 1),
    ]
    for fam, margin in sorted({(f, m) for f, m, _ in by}):
        vals = [[x["val_rsum"] for x in by.get((fam, margin, t), [])] for t in train_sets]
        cells = [mean_std(v) for v in vals]
        secs = [x["seconds"] for t in train_sets for x in by.get((fam, margin, t), [])]
        lines.append(
            f"| {fam} m={margin} | " + " | ".join(cells) + f" | {statistics.mean(secs):.0f} |"
        )
    for ts in train_sets:
        fams = sorted({f for f, t in picked if t == ts}, key=lambda f: (f.startswith("pico"), f))
        for test in runs(fams[0], ts)[0]["tests"] if fams else []:
            shift = "in-style" if test == ts else "shift"
            lines += [
                f"\n### train {ts} → test {test} ({shift})\n",
                "| method (margin picked on val) | rule | R@1 i→t | R@1 t→i | R@5 i→t | "
                "R@5 t→i | rSum | Δ rSum vs the same scorer's tuned baseline [95% CI] |",
                "|---|---|---|---|---|---|---|---|",
            ]
            for fam in fams:
                base = fam.removeprefix("pico-") if fam.startswith("pico-") else None
                base_rsum = rsums(base, ts, test, "plain") if (base, ts) in picked else []
                rs_runs = runs(fam, ts)
                for rule in rs_runs[0]["tests"][test]:
                    ms = [r["tests"][test][rule] for r in rs_runs]
                    rs = [m["rsum"] for m in ms]
                    same = len(rs) == len(base_rsum) > 0
                    lines.append(
                        f"| {fam} (m={picked[(fam, ts)]}) | {rule} | "
                        f"{mean_std([m['i2t']['r1'] for m in ms])} | "
                        f"{mean_std([m['t2i']['r1'] for m in ms])} | "
                        f"{mean_std([m['i2t']['r5'] for m in ms])} | "
                        f"{mean_std([m['t2i']['r5'] for m in ms])} | "
                        f"{mean_std(rs)} | {paired_ci(rs, base_rsum) if same else ''} |"
                    )
    return "\n".join(lines) + "\n"


def row_epochs(row: dict[str, Any]) -> int | None:
    """The epochs a result row trained. Rows written before rows recorded it scored their
    last epoch (select=last), so their ``best_epoch`` is that number."""
    return row.get("epochs") or row.get("best_epoch")


def check_budget(rows: list[dict[str, Any]], epochs: int, where: str) -> str | None:
    """Why ``rows`` cannot stand for runs of ``epochs`` epochs (None: they can)."""
    other = sorted({row_epochs(r) for r in rows} - {epochs}, key=str)
    if not other:
        return None
    return (
        f"{where} holds runs of {', '.join(map(str, other))} epochs, this run trains {epochs}: "
        "give --epochs to match it, or its own --results"
    )


def row_math(row: dict[str, Any]) -> str:
    """A row's math mode; rows written before rows recorded it ran MKL's native paths."""
    return row.get("math", "native")


def check_math(
    rows: list[dict[str, Any]], math_mode: str, where: str, mkl: str | None = None
) -> str | None:
    """Why ``rows`` cannot be continued by runs under ``math_mode`` (None: they can): a
    study whose rows round differently cannot be re-run bit for bit.

    ``mkl`` is the code path MKL runs here (``numerics.mkl_branch``): the same
    ``--math avx2-strict`` is MKL's AVX2 path on an Intel CPU and its ``auto`` path on an AMD
    one, which round differently, so rows that record another path are refused too (rows
    from before rows recorded it are not checked)."""
    other = sorted({row_math(r) for r in rows} - {math_mode})
    if other:
        return (
            f"{where} holds runs computed with --math {', '.join(other)}, this run uses "
            f"--math {math_mode}: give --math to match it, or its own --results"
        )
    paths = sorted({r["mkl"] for r in rows if "mkl" in r} - {mkl}) if mkl else []
    if paths:
        return (
            f"{where} holds runs whose MKL ran its {', '.join(paths)} path; on this machine "
            f"--math {math_mode} runs {mkl} (MKL_CBWR=AVX2 is honoured on Intel CPUs only), "
            "so its runs would round differently: continue the study on a machine like the "
            "first, or give this one its own --results"
        )
    return None


def row_recipe(row: dict[str, Any]) -> dict[str, Any]:
    """The ``--set`` options a row trained with; rows without the field used none."""
    return row.get("recipe", {})


def recipe_text(recipe: dict[str, Any]) -> str:
    """``--set`` options as a command line spells them (``{}``: the product's recipe)."""
    return " ".join(f"--set {k}={json.dumps(v)}" for k, v in sorted(recipe.items())) or "none"


def check_recipe(rows: list[dict[str, Any]], recipe: dict[str, Any], where: str) -> str | None:
    """Why ``rows`` cannot be continued or confirmed by runs of ``recipe`` (None: they can):
    rows trained another way are another study."""
    want = json.dumps(recipe, sort_keys=True)
    other = sorted({json.dumps(row_recipe(r), sort_keys=True) for r in rows} - {want})
    if not other:
        return None
    theirs = recipe_text(json.loads(other[0]))
    return (
        f"{where} holds runs trained with --set options {theirs}, this run uses "
        f"{recipe_text(recipe)}: give the same --set options, or its own --results"
    )
