"""What the quality study runs (``benchmarks/quality.py`` runs it): its training sets and the
test sets each one is scored on, its families (every scorer's baseline and PICO on it, the
other readings, the ablations) as configuration overrides, the margin grid, and the plans
that turn them into runs: the tuning grid, the confirmation of a study's picks, the
ablations. Data and pure functions, with no training and no torch, so that what a study
will run can be read, and tested, without running it."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

from quality_rows import (
    DEFAULT_PICO,
    SCORERS,
    best_baseline,
    best_pico,
    pick_margin,
    study_tune_seeds,
)

SCENES = "scenes:{}:size=1400"  # 1,002 / 201 / 201 images: a study-sized scenes set
TRAIN_SETS = {
    "twemoji": ["twemoji", "noto-emoji"],
    "noto-emoji": ["noto-emoji", "twemoji"],
    "tuxpaint": ["tuxpaint"],
    # compositional scenes: in-style, image-style shift (same test scenes drawn with Noto) and
    # caption-style shift (train on three phrasing families, test on the held-back one)
    SCENES.format("twemoji"): [SCENES.format("twemoji"), SCENES.format("style")],
    SCENES.format("caption"): [SCENES.format("caption")],
}
# The product's default recipe (TrainConfig: epochs=auto, lr 5e-4, steps at 60% / 85%, PICO
# warm-up 2 epochs, the last epoch scored) for every method alike.
BASE: dict[str, Any] = {}
MARGINS = (0.2, 0.8, 1.2)
# Every family names its reading (and λ) explicitly: a later change of picoalign's defaults
# must not silently change what a family measures.
PICO: dict[str, Any] = {
    "model.method": "pico",
    "model.pico.feedback_size": 32,
    "model.pico.reading": "pair",
    "model.pico.lam": 0.25,
    "model.pico.train_score": "weighted",
    "model.pico.eval_score": "plain",
}

# name -> (training overrides, margins to tune over, evaluation rules). "plain" (p ≡ 1),
# "weighted" (the model's own p / p(V,T)), "raw" (global p without renormalisation, reading A).
FAMILIES: dict[str, tuple[dict[str, Any], list[float], list[str]]] = {
    # every scorer's baseline, and PICO's default recipe on every scorer
    # (the same margin grid for every family: METHOD.md §7 saw 0.2 lose by 15–30 rSum on
    # emoji but win on Tux Paint)
    **{
        s: ({"model.method": "baseline", "model.scorer": s}, list(MARGINS), ["plain"])
        for s in SCORERS
    },
    **{
        f"pico-{s}": ({**PICO, "model.scorer": s}, list(MARGINS), ["plain", "weighted"])
        for s in SCORERS
    },
    # the other readings on the fine-grained scorer (not in --core)
    "pico-A": (
        {**PICO, "model.pico.reading": "global", "model.pico.lam": 0.0},
        [0.8, 1.2],
        ["plain", "weighted", "raw"],
    ),
    **{
        f"pico-B-lam{lam}": ({**PICO, "model.pico.lam": lam}, [0.8], ["plain", "weighted"])
        for lam in (0.5, 1.0)
    },
}
CORE = {*SCORERS, *(f"pico-{s}" for s in SCORERS)}
# options a run's own arguments or a family set: ``quality.py --set`` may not change them
RECIPE_FIXED = {
    "margin", "seed", "data", "progress", "out", "epochs",
    *(k for overrides, _, _ in FAMILIES.values() for k in overrides),
}  # fmt: skip
# Ablations of METHOD.md and sweeps of our constants on the default PICO (margin 0.8),
# Twemoji only, scored with each rule.
ABLATIONS: dict[str, dict[str, Any]] = {
    "abl-batch-only-p": {"model.pico.bank_size": 1},
    "abl-uniform-bank": {"model.pico.feedback": False},
    "abl-feedback-current-batch": {"model.pico.feedback_source": "batch"},
    "abl-magnitude": {"model.pico.estimator": "magnitude"},
    "abl-all-positives": {"model.pico.positives": "all"},
    "abl-train-plain": {"model.pico.train_score": "plain"},
    # sweeps of the reconstructed constants (validation decides; Twemoji, 3 seeds)
    "sweep-tau0.25": {"model.pico.tau": 0.25},
    "sweep-tau4": {"model.pico.tau": 4.0},
    "sweep-K2": {"model.pico.bank_size": 2},
    "sweep-K32": {"model.pico.bank_size": 32},
    "sweep-momentum0.9": {"model.pico.momentum": 0.9},
    "sweep-B-prior-global": {"model.pico.prior": "global"},
}


def slug(name: str) -> str:
    """A dataset spec as a file-name part (``scenes:twemoji:size=1400`` has characters some
    file systems refuse)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def history_path(plot_dir: Path, family: str, margin: float, train_set: str) -> Path:
    """Where the study keeps seed 0's per-epoch history of one configuration."""
    return plot_dir / "histories" / f"{family}-m{margin}-{slug(train_set)}.json"


def run_id(family: str, margin: float, train_set: str, seed: int) -> str:
    return f"{family}|m{margin}|{train_set}|s{seed}"


def plan(
    families: list[str],
    margins_of: dict[tuple[str, str], list[float]],
    seeds: list[int],
    train_sets: list[str],
) -> list[tuple[str, dict[str, Any], float, str, int, list[str]]]:
    """Runs of ``families`` on ``train_sets``: every margin of ``margins_of[(family, set)]``
    for every seed given."""
    return [
        (fam, FAMILIES[fam][0], margin, ts, seed, FAMILIES[fam][2])
        for fam in families
        for ts in train_sets
        for margin in margins_of[(fam, ts)]
        for seed in seeds
    ]


def confirm_tune(study: list[dict[str, Any]], train_set: str, n_tune: int | None) -> list[int]:
    """The seeds whose validation made the study's picks on ``train_set``: the ones it ran
    every margin on (``study_tune_seeds``), or the first ``n_tune`` of them. More than it
    tuned on is refused: a seed that ran only the picked margin would tilt the pick."""
    sub = [r for r in study if r["train_set"] == train_set]
    if not sub:
        raise ValueError(f"the study has no runs on {train_set}: nothing to confirm")
    tuned = study_tune_seeds(sub, train_set)
    if n_tune is not None and n_tune > len(tuned):
        raise ValueError(
            f"the study ran every margin on {len(tuned)} seed(s) of {train_set} "
            f"({', '.join(map(str, tuned))}), not {n_tune}: it was tuned on {len(tuned)}"
        )
    return list(tuned[:n_tune])


def confirm_plan(
    study: list[dict[str, Any]],
    train_set: str,
    seeds: list[int],
    n_tune: int | None = None,
    with_default: bool = False,
) -> list[tuple]:
    """The pre-registered confirmation's runs on ``train_set``: the best baseline and the best
    PICO family, each at its margin, all as the study's tuning seeds (``confirm_tune``)
    picked them on validation; run on the fresh ``seeds``. Nothing is tuned on them.

    ``with_default`` adds the default PICO at its picked margin where it is not the best PICO
    family, so that the report's "default PICO" headline has fresh-seed rows too (off by
    default: the confirmations registered before it ran without)."""
    tune = confirm_tune(study, train_set, n_tune)
    sub = [r for r in study if r["train_set"] == train_set]
    chosen = [best_baseline(sub, train_set, tune), best_pico(sub, train_set, tune)]
    if with_default and DEFAULT_PICO not in chosen:
        if not any(r["family"] == DEFAULT_PICO for r in sub):
            raise ValueError(f"the study has no {DEFAULT_PICO} runs on {train_set}")
        chosen.append(DEFAULT_PICO)
    picks = {(f, train_set): [pick_margin(sub, f, train_set, tune)] for f in chosen}
    return plan(chosen, picks, seeds, [train_set])


def ablation_plan(seeds: list[int], train_set: str) -> list[tuple]:
    """The ablations and sweeps of the default PICO (margin 0.8) on one training set."""
    return [
        (name, {**FAMILIES[DEFAULT_PICO][0], **extra}, 0.8, train_set, seed, ["plain", "weighted"])
        for name, extra in ABLATIONS.items()
        for seed in seeds
    ]


def recipe_option(text: str) -> tuple[str, Any]:
    """``--set KEY=VALUE`` of ``quality.py``: the value read as YAML, as ``picoalign train``
    reads it."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--set expects KEY=VALUE, got {text!r}")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw)


def recipe_of(base: dict[str, Any]) -> dict[str, Any]:
    """What a row records of the recipe options its run trained with: everything but the
    epochs (recorded as ``epochs`` and checked on their own)."""
    return {k: v for k, v in base.items() if k != "epochs"}
