"""Two arms from any two study files, paired by seed: what ``quality.py``'s report cannot do
when the arms ran under different recipes (``--set``), hence in different files.

An arm is ``FILE.jsonl:FAMILY:MARGIN``. Rows of the two arms are paired on their seeds (the
seeds both have; a seed one arm lacks is named, never silently dropped), and each test set
gets both arms' rSum (mean ± std), the paired Δ (B − A) with its 95 % t interval — the
statistic of the registered rules in docs/results.md — and Δ per seed.

    python benchmarks/compare_rows.py \\
        benchmarks/results/dropout-confirm-scenes-p0.jsonl:fine_grained:0.8 \\
        benchmarks/results/dropout-confirm-scenes.jsonl:fine_grained:0.8

A file that holds an arm's runs trained on several sets needs ``--train-set NAME``: a seed of
one arm must name one run, never whichever of several came last, and an arm never pairs runs
of different training sets, even where their seeds do not collide. Two arms trained on
different sets are refused for the same reason.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from quality_rows import mean_std, paired_ci


def parse_arm(text: str) -> tuple[Path, str, float]:
    """``FILE:FAMILY:MARGIN`` → its parts, or a usage error that says what was expected."""
    path, sep, rest = text.rpartition(":")
    path, sep2, family = path.rpartition(":")
    try:
        margin = float(rest)
    except ValueError:
        margin = None
    if not (sep and sep2 and path and family) or margin is None:
        raise argparse.ArgumentTypeError(f"expected FILE.jsonl:FAMILY:MARGIN, got {text!r}")
    return Path(path), family, margin


def arm_rows(
    path: Path, family: str, margin: float, rule: str, train_set: str | None = None
) -> tuple[str | None, dict[int, dict[str, float]]]:
    """The arm's training set and seed → {test set: rSum under ``rule``} of its rows in
    ``path`` (only those trained on ``train_set`` when given). Rows of several training sets
    without ``train_set`` are refused: pairing them by seed would compare different data."""
    out: dict[int, dict[str, float]] = {}
    trained_on: dict[str | None, int] = {}  # training set → the first line that has it
    rules: set[str] = set()  # the scoring rules the arm's rows hold
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row: dict[str, Any] = json.loads(line)
        except json.JSONDecodeError as e:
            raise SystemExit(f"{path}:{n}: not a JSON row ({e.msg})") from None
        if row.get("family") != family or row.get("margin") != margin:
            continue
        if train_set is not None and row.get("train_set") != train_set:
            continue
        if row["seed"] in out:
            hint = "" if train_set else " (rows of several train sets? pick one: --train-set)"
            raise SystemExit(
                f"{path}:{n}: a second {family} m={margin} row for seed {row['seed']}{hint}"
            )
        out[row["seed"]] = {t: v[rule]["rsum"] for t, v in row["tests"].items() if rule in v}
        rules.update(r for v in row["tests"].values() for r in v)
        trained_on.setdefault(row.get("train_set"), n)
    if not out:
        where = f" trained on {train_set}" if train_set else ""
        raise SystemExit(f"{path}: no rows of {family} at margin {margin}{where}")
    if not any(out.values()):  # a typo, or a rule the family does not score with
        raise SystemExit(
            f"{path}: the {family} m={margin} rows have no {rule!r} scores (rules there: "
            f"{', '.join(sorted(rules))})"
        )
    if len(trained_on) > 1:
        sets = ", ".join(f"{t} (line {n})" for t, n in trained_on.items())
        raise SystemExit(
            f"{path}: the {family} m={margin} rows were trained on several sets: {sets}; "
            "pick one with --train-set"
        )
    return next(iter(trained_on)), out


def compare(a: dict[int, dict[str, float]], b: dict[int, dict[str, float]]) -> list[str]:
    """The markdown table of B against A, one line per test set both arms were scored on."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise SystemExit(f"the arms share no seed (A: {sorted(a)}, B: {sorted(b)})")
    lines = [
        f"seeds {', '.join(map(str, seeds))}",
        "",
        "| test set | A | B | Δ (B − A) [95% CI] | per seed |",
        "|---|---|---|---|---|",
    ]
    tests = [t for t in a[seeds[0]] if all(t in a[s] and t in b[s] for s in seeds)]
    for t in tests:
        xa, xb = [a[s][t] for s in seeds], [b[s][t] for s in seeds]
        per = " / ".join(f"{y - x:+.1f}" for x, y in zip(xa, xb, strict=True))
        lines.append(f"| {t} | {mean_std(xa)} | {mean_std(xb)} | {paired_ci(xb, xa)} | {per} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("a", type=parse_arm, help="the reference arm, FILE.jsonl:FAMILY:MARGIN")
    ap.add_argument("b", type=parse_arm, help="the arm compared with it")
    ap.add_argument(
        "--rule",
        default="plain",
        choices=["plain", "weighted", "raw"],
        help="the scoring rule read (default plain)",
    )
    ap.add_argument(
        "--train-set", help="read only the runs trained on this set (a row's train_set)"
    )
    args = ap.parse_args(argv)
    for path, _, _ in (args.a, args.b):
        if not path.is_file():
            ap.error(f"{path}: no such file")
    (set_a, a), (set_b, b) = (arm_rows(*arm, args.rule, args.train_set) for arm in (args.a, args.b))
    if set_a != set_b:
        ap.error(f"arm A was trained on {set_a}, arm B on {set_b}: a paired Δ needs one set")
    only = sorted(set(a) ^ set(b))
    if only:
        print(f"seeds in one arm only, left out: {only}", file=sys.stderr)
    print("\n".join(compare(a, b)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
