"""The quality study's decisions (``benchmarks/quality_rows.py``, on synthetic rows), its
plans (``benchmarks/quality_plan.py``) and its command line (``benchmarks/quality.py``):
which margin, which baseline and which PICO family the study picks (on validation only,
never on test), what the registered confirmation runs, and the paired interval its rule
reads. These choices decide what docs/results.md claims, so
they are tested like product code."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
TS = "twemoji"


def load(name: str) -> ModuleType:
    """A benchmarks script as a module (its siblings importable, as when it runs)."""
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(f"{name}_under_test", BENCH / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH))
    return module


@pytest.fixture(scope="module")
def quality() -> ModuleType:
    """The study script: its families, plans and command line."""
    return load("quality")


@pytest.fixture(scope="module")
def decide() -> ModuleType:
    """``quality_rows``: what the study decides from its rows."""
    return load("quality_rows")


def row(family: str, margin: float, seed: int, val: float, test: float, ts: str = TS) -> dict:
    """One study row as ``one_run`` writes it (only the fields the decisions read)."""
    rules = {"plain": {"rsum": test, "i2t": {"r1": 1, "r5": 2}, "t2i": {"r1": 1, "r5": 2}}}
    return {
        "id": f"{family}|m{margin}|{ts}|s{seed}",
        "family": family,
        "margin": margin,
        "train_set": ts,
        "seed": seed,
        "val_rsum": val,
        "seconds": 1.0,
        "tests": {ts: rules},
    }


def study() -> list[dict[str, Any]]:
    """A tuning seed 0 where test would pick differently from validation everywhere."""
    return [
        # baselines: gpo has the best validation; global has the best test (must not matter)
        row("global", 0.2, 0, val=200, test=260),
        row("global", 0.8, 0, val=210, test=250),
        row("gpo", 0.2, 0, val=220, test=200),
        row("gpo", 0.8, 0, val=215, test=255),
        row("fine_grained", 0.8, 0, val=205, test=240),
        # PICO: pico-fine_grained has the best validation at margin 0.2
        row("pico-global", 0.8, 0, val=211, test=270),
        row("pico-fine_grained", 0.2, 0, val=230, test=230),
        row("pico-fine_grained", 0.8, 0, val=225, test=280),
        # another seed with a better validation elsewhere: not the tuning seed
        row("global", 1.2, 1, val=300, test=300),
    ]


def test_the_margin_is_picked_on_the_tuning_seeds_validation(decide) -> None:
    rows = study()
    assert decide.pick_margin(rows, "global", TS, 0) == 0.8  # not 0.2 (test), not 1.2 (seed 1)
    assert decide.pick_margin(rows, "gpo", TS, 0) == 0.2
    assert decide.pick_margin(rows, "global", TS, 1) == 1.2
    with pytest.raises(ValueError, match="no tuning run of gpo"):
        decide.pick_margin(rows, "gpo", TS, 1)


def test_a_validation_tie_goes_to_the_smaller_margin(decide) -> None:
    rows = [row("global", 1.2, 0, val=210, test=0), row("global", 0.8, 0, val=210, test=0)]
    assert decide.pick_margin(rows, "global", TS, 0) == 0.8


def test_best_baseline_and_best_pico_are_picked_on_validation(decide) -> None:
    rows = study()
    assert decide.best_baseline(rows, TS, 0) == "gpo"  # global wins on test only
    assert decide.best_pico(rows, TS, 0) == "pico-fine_grained"
    with pytest.raises(ValueError, match="none of"):
        decide.best_of(rows, ["pico-gpo"], TS, 0)


def test_the_confirmation_runs_the_picked_pair_at_their_margins_on_the_fresh_seeds(
    quality,
) -> None:
    runs = quality.confirm_plan(study(), TS, [10, 11, 12])
    got = sorted((fam, margin, ts, seed) for fam, _, margin, ts, seed, _ in runs)
    want = sorted(
        (fam, m, TS, s)
        for fam, m in (("gpo", 0.2), ("pico-fine_grained", 0.2))
        for s in (10, 11, 12)
    )
    assert got == want
    # each run carries its family's own training overrides and evaluation rules
    for fam, overrides, *_, rules in runs:
        assert (overrides, rules) == (quality.FAMILIES[fam][0], quality.FAMILIES[fam][2])
    with pytest.raises(ValueError, match="no runs on noto-emoji"):
        quality.confirm_plan(study(), "noto-emoji", [10])


def test_the_confirmation_adds_the_default_pico_only_when_asked_and_not_already_there(
    quality,
) -> None:
    rows = [*study(), row("pico-global", 0.2, 0, val=240, test=0)]  # now the best PICO
    pairs = {(r[0], r[2]) for r in quality.confirm_plan(rows, TS, [10])}
    assert pairs == {("gpo", 0.2), ("pico-global", 0.2)}
    pairs = {(r[0], r[2]) for r in quality.confirm_plan(rows, TS, [10], with_default=True)}
    assert pairs == {("gpo", 0.2), ("pico-global", 0.2), ("pico-fine_grained", 0.2)}
    # where the default PICO is the best one, nothing is run twice
    assert len(quality.confirm_plan(study(), TS, [10], with_default=True)) == 2
    no_default = [r for r in rows if r["family"] != "pico-fine_grained"]
    with pytest.raises(ValueError, match="no pico-fine_grained runs on twemoji"):
        quality.confirm_plan(no_default, TS, [10], with_default=True)


def test_with_default_is_refused_outside_a_confirmation(quality, capsys) -> None:
    with pytest.raises(SystemExit):
        quality.main(["--with-default"])
    assert "--with-default goes with --confirm" in capsys.readouterr().err


def three_seeds() -> list[dict[str, Any]]:
    """Seed 0 alone prefers margin 0.2 by one validation point; seeds 1 and 2 prefer 1.2."""
    vals = {0.2: (219, 200, 201), 1.2: (218, 215, 214)}
    return [
        row(fam, m, seed, val=v[seed] + bump, test=v[seed] + bump)
        for fam, bump in (("fine_grained", 0), ("pico-fine_grained", 1))
        for m, v in vals.items()
        for seed in range(3)
    ]


def test_several_tuning_seeds_pick_on_their_mean_validation(decide) -> None:
    rows = three_seeds()
    assert decide.pick_margin(rows, "fine_grained", TS, 0) == 0.2  # one seed: one point
    assert decide.pick_margin(rows, "fine_grained", TS, [0, 1, 2]) == 1.2  # 215.7 vs 206.7
    assert decide.val_of(rows, "fine_grained", TS, 1.2, (0, 1, 2)) == pytest.approx(647 / 3)
    assert decide.best_of(rows, ["fine_grained", "pico-fine_grained"], TS, [0, 1, 2]) == (
        "pico-fine_grained"
    )
    # a margin that not every tuning seed ran is no candidate, and no margin at all is an error
    partial = [r for r in rows if not (r["margin"] == 1.2 and r["seed"] == 2)]
    assert decide.pick_margin(partial, "fine_grained", TS, [0, 1, 2]) == 0.2
    with pytest.raises(ValueError, match=r"no tuning run of gpo .*the mean of seeds 0, 1, 2"):
        decide.pick_margin(rows, "gpo", TS, [0, 1, 2])


def test_a_report_tuned_on_several_seeds_says_so_and_shows_their_picks(decide) -> None:
    text = decide.report(three_seeds(), tune=[0, 1, 2])
    assert "margin with the best validation rSum of the mean of seeds 0, 1, 2" in text
    want = "| fine_grained (m=1.2) | 215.7 ± 2.1 | pico-fine_grained (m=1.2) | 216.7 ± 2.1 |"
    assert want in text


def test_the_confirmation_uses_the_studys_tuning_seeds(quality) -> None:
    runs = quality.confirm_plan(three_seeds(), TS, [40, 41], n_tune=3)
    assert sorted({(fam, margin) for fam, _, margin, *_ in runs}) == [
        ("fine_grained", 1.2),
        ("pico-fine_grained", 1.2),
    ]
    # by default the seeds the study ran every margin on; fewer may be asked for, not more
    assert {r[2] for r in quality.confirm_plan(three_seeds(), TS, [40])} == {1.2}
    assert {r[2] for r in quality.confirm_plan(three_seeds(), TS, [40], n_tune=1)} == {0.2}
    with pytest.raises(ValueError, match=r"every margin on 3 seed\(s\) .*\(0, 1, 2\), not 4"):
        quality.confirm_plan(three_seeds(), TS, [40], n_tune=4)


def test_the_tuning_seeds_are_read_back_from_a_studys_rows(decide) -> None:
    assert decide.study_tune_seeds(three_seeds(), TS) == (0, 1, 2)
    assert decide.study_tune_seeds(study(), TS) == (0,)  # seed 1 ran one margin only
    # a one-seed study's later seeds run only the picked margins: they never tuned
    picked = [r for r in three_seeds() if r["seed"] == 0 or r["margin"] == 1.2]
    assert decide.study_tune_seeds(picked, TS) == (0,)
    with pytest.raises(ValueError, match="no runs on noto-emoji"):
        decide.study_tune_seeds(three_seeds(), "noto-emoji")


def test_a_confirmation_of_a_one_seed_study_refuses_three_tuning_seeds(
    quality, tmp_path, capsys
) -> None:
    tuned = tmp_path / "tuned.jsonl"
    tuned.write_text("".join(json.dumps(r) + "\n" for r in study()))
    own = ["--results", str(tmp_path / "c.jsonl"), "--report", str(tmp_path / "c.md")]
    args = ["--confirm", str(tuned), "--train-sets", TS, "--seeds", "40", *own]
    with pytest.raises(SystemExit) as info:
        quality.main([*args, "--tune-seeds", "3"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "every margin on 1 seed(s) of twemoji (0), not 3" in err
    assert not (tmp_path / "c.jsonl").exists()


@pytest.mark.parametrize(("given", "says"), [([], "the mean of seeds 0, 1, 2"), (["1"], "seed 0")])
def test_the_study_tunes_on_three_seeds_unless_told(quality, tmp_path, given, says) -> None:
    rows = tmp_path / "r.jsonl"
    rows.write_text("".join(json.dumps(r) + "\n" for r in three_seeds()))
    own = ["--results", str(rows), "--report", str(tmp_path / "r.md"), "--plots", str(tmp_path)]
    tune = ["--tune-seeds", *given] if given else []
    quality.main(["--report-only", "--seeds", "0", "1", "2", "--train-sets", TS, *own, *tune])
    assert f"margin with the best validation rSum of {says}" in (tmp_path / "r.md").read_text()


def test_report_only_replaces_no_report_it_would_change(quality, tmp_path, capsys) -> None:
    """The audit: the documented `--report-only` command rewrote the committed report and
    docs pictures (drawn by older code) without --overwrite, so they silently stopped being
    what the repo's files said."""
    rows = tmp_path / "r.jsonl"
    rows.write_text("".join(json.dumps(r) + "\n" for r in three_seeds()))
    report = tmp_path / "r.md"
    argv = ["--report-only", "--seeds", "0", "1", "2", "--train-sets", TS, "--results",
            str(rows), "--report", str(report), "--plots", str(tmp_path)]  # fmt: skip
    assert quality.main(argv) == 0  # a new report is written
    made = report.read_text()
    assert quality.main(argv) == 0 and "written: nothing" in capsys.readouterr().out
    report.write_text(made.replace("validation", "val"))  # as older code wrote it
    with pytest.raises(SystemExit) as info:
        quality.main(argv)
    assert info.value.code == 2 and f"would change {report}" in capsys.readouterr().err
    assert "val rSum" in report.read_text()  # untouched
    assert quality.main([*argv, "--overwrite"]) == 0 and report.read_text() == made


def test_report_only_of_missing_rows_or_into_a_folder_is_refused(quality, tmp_path, capsys):
    """The re-test: a mistyped --results wrote a report of empty tables with exit 0, and a
    --report naming a folder was refused with "pass --overwrite", which then crashed."""
    argv = ["--report-only", "--train-sets", TS, "--plots", str(tmp_path)]
    for extra, says in (
        (["--results", str(tmp_path / "typo.jsonl"), "--report", str(tmp_path / "r.md")],
         "typo.jsonl: no such file"),
        (["--results", str(tmp_path / "r.jsonl"), "--report", str(tmp_path)], "is a folder"),
        (["--results", str(tmp_path / "e.jsonl"), "--report", str(tmp_path / "r.md")],
         "holds no rows"),
        (["--results", str(tmp_path / "b.jsonl"), "--report", str(tmp_path / "r.md")],
         "b.jsonl line 2: not a row of this study"),
    ):  # fmt: skip
        (tmp_path / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in three_seeds()))
        (tmp_path / "e.jsonl").write_text("")
        (tmp_path / "b.jsonl").write_text(json.dumps(three_seeds()[0]) + "\n{not json\n")
        with pytest.raises(SystemExit) as info:
            quality.main([*argv, *extra])
        assert info.value.code == 2 and says in capsys.readouterr().err
    assert not (tmp_path / "r.md").exists()


def test_more_tuning_seeds_than_seeds_is_refused(quality, tmp_path, capsys) -> None:
    own = ["--results", str(tmp_path / "r.jsonl"), "--report", str(tmp_path / "r.md")]
    with pytest.raises(SystemExit) as info:
        quality.main(["--seeds", "0", "1", "--tune-seeds", "3", *own])
    assert info.value.code == 2 and "--tune-seeds must be between 1 and the 2" in (
        capsys.readouterr().err
    )


def test_the_paired_interval_is_a_t_interval_of_the_per_seed_differences(decide) -> None:
    # differences 1, 2, 3: mean 2, sd 1, t(0.975, 2 df) = 4.303
    half = 4.303 / math.sqrt(3)
    assert (
        decide.paired_ci([11, 12, 13], [10, 10, 10]) == f"+2.0 [{2 - half:+.1f}, {2 + half:+.1f}]"
    )
    assert decide.paired_ci([5.0], [7.5]) == "-2.5"  # one seed: no interval
    with pytest.raises(ValueError):  # unpaired seeds are an error, not a silent zip
        decide.paired_ci([1, 2], [1])


def test_the_report_headline_compares_the_validation_picks(decide) -> None:
    rows = study()
    rows += [
        row("gpo", 0.2, 1, val=0, test=210),
        row("pico-fine_grained", 0.2, 1, val=0, test=215),
        row("fine_grained", 0.8, 1, val=0, test=0),
    ]
    text = decide.report(rows, tune=0)
    best = next(line for line in text.splitlines() if line.startswith(f"| {TS} → {TS} | gpo"))
    # gpo (m=0.2) tests 200, 210; pico-fine_grained (m=0.2) tests 230, 215: Δ = +30, +5
    assert "| gpo (m=0.2) | 205.0 ± 7.1 | pico-fine_grained (m=0.2) | 222.5 ± 10.6 |" in best
    assert best.split("|")[6].strip().startswith("+17.5 [")


def test_paths_given_are_used_and_a_report_is_never_replaced_unasked(
    quality, tmp_path, capsys
) -> None:
    """The walkthrough's reports: --quick renamed the --results/--report it was given to
    quality-quick.*, and a new study replaced an existing report (a user's notes) silently."""
    report = tmp_path / "my.md"
    report.write_text("MY NOTES")
    argv = ["--quick", "--math", "native", "--results", str(tmp_path / "my.jsonl")]
    with pytest.raises(SystemExit) as info:
        quality.main([*argv, "--report", str(report)])
    assert info.value.code == 2
    assert f"{report} exists: --overwrite to replace it" in capsys.readouterr().err
    assert report.read_text() == "MY NOTES" and not (tmp_path / "quality-quick.jsonl").exists()


def test_another_budget_never_writes_into_the_studys_files(quality, tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        quality.main(["--epochs", "6", "--results", str(tmp_path / "r.jsonl")])
    assert info.value.code == 2 and "give its own --report" in capsys.readouterr().err


def test_rows_of_another_budget_are_never_resumed_or_confirmed(
    quality, decide, make_feature_set
) -> None:
    legacy = row("global", 0.8, 0, val=1, test=1) | {"best_epoch": 20}  # before rows had it
    new = row("gpo", 0.8, 0, val=1, test=1) | {"best_epoch": 6, "epochs": 6}
    assert decide.row_epochs(legacy) == 20 and decide.row_epochs(new) == 6
    assert decide.check_budget([legacy], 20, "r.jsonl") is None
    why = decide.check_budget([legacy, new], 6, "r.jsonl")
    assert why.startswith("r.jsonl holds runs of 20 epochs, this run trains 6")
    fs = make_feature_set(n=24, captions=5)  # the recipe's auto: 6 epochs at five captions
    assert quality.planned_epochs({}, fs) == 6
    assert quality.planned_epochs({"epochs": 20}, fs) == 20


def test_the_epochs_flag_still_needs_its_own_plots(quality, tmp_path, capsys) -> None:
    own = ["--results", str(tmp_path / "r.jsonl"), "--report", str(tmp_path / "r.md")]
    with pytest.raises(SystemExit) as info:
        quality.main(["--epochs", "20", *own])
    assert info.value.code == 2 and "give its own --plots" in capsys.readouterr().err


def test_a_confirmations_report_names_the_tuning_run_not_its_own_seed(decide) -> None:
    text = decide.report(study(), 0, confirms="quality-tuned.jsonl")
    assert "margin that the tuning run quality-tuned.jsonl picked" in text
    assert "best validation rSum of seed" not in text
    assert "margin with the best validation rSum of seed 0" in decide.report(study(), 0)
    three = decide.report(three_seeds(), 40, confirms="tune3.jsonl", confirms_tuned_on=3)
    assert "tune3.jsonl picked on the mean validation of its 3 tuning seeds" in three


def test_rows_of_another_math_are_never_resumed(decide) -> None:
    legacy = row("global", 0.8, 0, val=1, test=1)  # before rows recorded their math
    strict = row("gpo", 0.8, 0, val=1, test=1) | {"math": "avx2-strict"}
    assert decide.row_math(legacy) == "native"
    assert decide.check_math([strict], "avx2-strict", "r.jsonl") is None
    why = decide.check_math([legacy, strict], "avx2-strict", "r.jsonl")
    assert why.startswith("r.jsonl holds runs computed with --math native")
    intel = strict | {"mkl": "avx2,strict"}  # the same --math on an Intel and an AMD CPU
    assert decide.check_math([strict, intel], "avx2-strict", "r.jsonl", "avx2,strict") is None
    why = decide.check_math([strict, intel], "avx2-strict", "r.jsonl", "auto,strict")
    assert "MKL ran its avx2,strict path" in why and "runs auto,strict" in why


def test_strict_math_is_not_faked_when_called_as_a_function(
    quality, tmp_path, capsys, monkeypatch
) -> None:
    """The setting only works from the process's start: main() called in a running Python
    refuses instead of running native math under the strict label."""
    monkeypatch.delenv("MKL_CBWR", raising=False)
    own = ["--results", str(tmp_path / "r.jsonl"), "--report", str(tmp_path / "r.md")]
    with pytest.raises(SystemExit) as info:
        quality.main(own)
    assert info.value.code == 2 and "MKL_CBWR=AVX2,STRICT" in capsys.readouterr().err
    assert not (tmp_path / "r.jsonl").exists()


def test_a_rows_weights_fingerprint_tells_models_apart_by_their_bits(quality) -> None:
    import torch

    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    b.load_state_dict(a.state_dict())
    assert quality.weights_sha256(a) == quality.weights_sha256(b)
    with torch.no_grad():
        b.bias[0] = torch.nextafter(b.bias[0], torch.tensor(1.0))  # one ulp
    assert quality.weights_sha256(a) != quality.weights_sha256(b)


def test_the_fingerprint_is_the_one_the_committed_rows_carry(quality) -> None:
    """The committed rows' ``weights_sha256`` hashed each tensor's name and bytes in sorted
    name order; the shared digest must keep giving those digits, or no old row re-checks."""
    import hashlib

    import torch

    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.LayerNorm(2))
    model.register_buffer("a_buffer", torch.arange(4.0))  # sorts before the layers' names
    old = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        old.update(name.encode())
        old.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    assert quality.weights_sha256(model) == old.hexdigest()[:16]


def test_one_run_row_fingerprints_its_model_and_its_features(
    quality, make_feature_set, monkeypatch
) -> None:
    """A real (tiny) study run: the row's ``weights_sha256`` is the saved model's and its
    ``features_sha256`` the training features', so two machines' rows can be told apart by
    encoders or by training."""
    fs = make_feature_set(n=24, captions=2)
    monkeypatch.setattr(quality, "TRAIN_SETS", {"tiny": ["tiny"]})
    overrides, _, rules = quality.FAMILIES["fine_grained"]
    base = {"epochs": 1, "batch_size": 8}
    feats = {"tiny": fs}
    row = quality.one_run("fine_grained", overrides, 0.2, "tiny", 0, rules, feats, base, None)
    assert row["features_sha256"] == fs.digest()[:16]
    assert row["features_math"] == "unknown"  # made in memory here, not by cached_features
    assert len(row["weights_sha256"]) == 16
    assert set(row["tests"]) == {"tiny"}
    again = quality.one_run("fine_grained", overrides, 0.2, "tiny", 0, rules, feats, base, None)
    assert again["weights_sha256"] == row["weights_sha256"]  # same seed, same bits


def test_rows_of_another_recipe_are_never_resumed_or_confirmed(decide) -> None:
    legacy = row("global", 0.8, 0, val=1, test=1)  # before rows recorded a recipe: none
    fast = row("gpo", 0.8, 0, val=1, test=1) | {"recipe": {"sparse_backward": True}}
    assert decide.row_recipe(legacy) == {}
    assert decide.check_recipe([legacy], {}, "r.jsonl") is None
    assert decide.check_recipe([fast], {"sparse_backward": True}, "r.jsonl") is None
    why = decide.check_recipe([legacy, fast], {}, "r.jsonl")
    assert why == (
        "r.jsonl holds runs trained with --set options --set sparse_backward=true, this run "
        "uses none: give the same --set options, or its own --results"
    )
    text = decide.report([legacy, fast], 0)
    assert "Recipe options (`--set`): --set sparse_backward=true; none." in text


OWN_FILES = ["--results", "r.jsonl", "--report", "r.md", "--plots", "plots"]


@pytest.mark.parametrize(
    ("given", "says"),
    [
        (["--set", "sparse_backward=true"], "give its own --results"),
        (["--set", "epochs=3", *OWN_FILES], "--set epochs: the study sets it"),
        (["--set", "model.pico.lam=0.5", *OWN_FILES], "--set model.pico.lam: the study sets"),
        (["--set", "sparse_backwrd=true", *OWN_FILES], "did you mean sparse_backward"),
        (["--set", "trim_padding=maybe", *OWN_FILES], "valid boolean"),
        (["--set", "trim_padding", *OWN_FILES], "--set expects KEY=VALUE"),
    ],
)
def test_a_bad_recipe_option_is_refused_before_any_work(
    quality, tmp_path, capsys, monkeypatch, given, says
) -> None:
    monkeypatch.chdir(tmp_path)  # OWN_FILES are relative: nothing may appear here
    with pytest.raises(SystemExit) as info:
        quality.main(given)
    assert info.value.code == 2 and says in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_recipe_option_reaches_the_run_and_its_row(quality, make_feature_set, monkeypatch):
    """``--set`` options go into every run's config (here: trim_padding feeds fewer caption
    slots) and into its row, so a study can tell its rows' recipe."""
    fs = make_feature_set(n=24, captions=2)
    monkeypatch.setattr(quality, "TRAIN_SETS", {"tiny": ["tiny"]})
    overrides, _, rules = quality.FAMILIES["fine_grained"]
    seen = []
    real_train = quality.train
    monkeypatch.setattr(quality, "train", lambda cfg, f: seen.append(cfg) or real_train(cfg, f))
    base = {"epochs": 1, "batch_size": 8, "trim_padding": True}
    row = quality.one_run("fine_grained", overrides, 0.2, "tiny", 0, rules, {"tiny": fs}, base,
                          None)  # fmt: skip
    assert seen[0].trim_padding is True
    assert row["recipe"] == {"batch_size": 8, "trim_padding": True}
    assert row["epochs"] == 1


def test_a_confirmation_of_another_recipe_needs_no_plots(quality, tmp_path, capsys) -> None:
    """A confirmation draws no plots, so ``--set`` asks it only for its own results and
    report (the registered commands name no --plots)."""
    study = tmp_path / "study.jsonl"
    study.write_text("".join(json.dumps(r | {"recipe": {"sparse_backward": True}}) + "\n"
                             for r in three_seeds()))  # fmt: skip
    own = ["--results", str(tmp_path / "c.jsonl"), "--report", str(tmp_path / "c.md")]
    argv = ["--set", "sparse_backward=true", "--confirm", str(study), "--train-sets", TS]
    (tmp_path / "c.jsonl").write_text("")
    with pytest.raises(SystemExit):  # no rows: no report of empty tables (the re-test)
        quality.main([*argv, "--seeds", "40", "41", "42", *own, "--report-only"])
    assert "holds no rows" in capsys.readouterr().err
    (tmp_path / "c.jsonl").write_text(study.read_text())  # the study's rows, as a stand-in
    assert quality.main([*argv, "--seeds", "40", "41", "42", *own, "--report-only"]) == 0
    assert (tmp_path / "c.md").exists() and not (tmp_path / "plots").exists()
    with pytest.raises(SystemExit):  # a study (not a confirmation) still needs its own plots
        quality.main(["--set", "sparse_backward=true", *own])
    assert "give its own --plots" in capsys.readouterr().err
