"""Benchmark scripts' own logic: they never replace a result by being re-run (with an
existing ``--out`` and no ``--overwrite`` each one stops before any work and leaves the file
as it was), and ``profile_run`` reads its figures off the profile it takes."""

from __future__ import annotations

import json
import re

import pytest
from test_quality_study import load

# script -> the extra arguments that reach its output check, the file suffixes it writes
SCRIPTS = {
    "rounding": ([], [""]),
    "zeroshot": ([], [""]),
    "scenes_baselines": ([], ["", ".md"]),
    "input_options": ([], [".jsonl", ".md"]),
    "epochs_probe": ([], [""]),
    "gpu_check": (["--dry-run"], [""]),
    "curves": ([], [""]),
    "scenes_sheet": ([], [""]),
    "cache_reuse": ([], [""]),
}
# scripts whose files are opt-in (no default path): the option that names one
OPT_IN = {
    "retrieval_real": "--json",
    "retrieval_scale": "--json",
    "similarity_speed": "--json",
}
OPT_IN_PLOTS = {"retrieval_scale": "--plot", "similarity_speed": "--plot"}


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_an_existing_result_is_refused_before_any_work(name, tmp_path) -> None:
    extra, suffixes = SCRIPTS[name]
    out = tmp_path / "result.json"
    kept = out.with_suffix(suffixes[-1]) if suffixes[-1] else out
    kept.write_text("a committed result\n")
    module = load(name)
    with pytest.raises(SystemExit, match=r"exists .*--overwrite"):
        module.main([*extra, "--out", str(out)])
    assert kept.read_text() == "a committed result\n"


@pytest.mark.parametrize(
    ("name", "flag"), [*OPT_IN.items(), *OPT_IN_PLOTS.items()], ids=lambda x: str(x)
)
def test_an_existing_opt_in_file_is_refused_before_any_work(name, flag, tmp_path) -> None:
    kept = tmp_path / "result.json"
    kept.write_text("a committed result\n")
    module = load(name)
    with pytest.raises(SystemExit, match=r"exists .*--overwrite"):
        module.main([flag, str(kept)])
    assert kept.read_text() == "a committed result\n"


def test_write_unless_changed_writes_new_and_same_files_and_refuses_changes(tmp_path) -> None:
    common = load("_common")
    new, same, other = (tmp_path / n for n in ("new.png", "same.png", "other.png"))
    same.write_bytes(b"same")
    other.write_bytes(b"old")
    drawn = {p: tmp_path / f"drawn-{p.name}" for p in (new, same, other)}
    for dest, aside in drawn.items():
        aside.write_bytes(b"old" if dest is new else b"same" if dest is same else b"new")
    with pytest.raises(FileExistsError, match=r"--report-only would change .*other.png"):
        common.write_unless_changed(drawn, False, "--report-only")
    assert not new.exists() and other.read_bytes() == b"old"  # nothing written
    del drawn[other]
    assert common.write_unless_changed(drawn, False, "--report-only") == [new]
    assert new.read_bytes() == b"old"


def test_refuse_to_overwrite_lets_new_files_and_overwrite_through(tmp_path) -> None:
    common = load("_common")
    new, old = tmp_path / "new.json", tmp_path / "old.json"
    old.write_text("{}")
    common.refuse_to_overwrite([new], overwrite=False)
    common.refuse_to_overwrite([new, old], overwrite=True)
    with pytest.raises(SystemExit, match=re.escape(str(old))):
        common.refuse_to_overwrite([new, old], overwrite=False)


def test_profile_run_reads_cumulative_seconds_of_one_function() -> None:
    """``profile_run.seconds_in`` finds a function by its file and name (0 when it did not
    run), which is how the docs' max-mean figures are read off the profile."""
    import cProfile
    import pstats
    import time

    profile_run = load("profile_run")

    def napping() -> None:
        time.sleep(0.05)

    prof = cProfile.Profile()
    prof.enable()
    napping()
    prof.disable()
    stats = pstats.Stats(prof)
    assert profile_run.seconds_in(stats, "test_benchmark_outputs", "napping") >= 0.04
    assert profile_run.seconds_in(stats, "test_benchmark_outputs", "not_called") == 0
    assert profile_run.gemm_rate(8, 8, 8, repeats=2) > 0


def test_time_shares_groups_a_studys_rows_by_set_and_family(tmp_path, capsys) -> None:
    profile_run = load("profile_run")
    rows = [
        {"train_set": "a", "family": "f", "seconds": 30.0},
        {"train_set": "a", "family": "f", "seconds": 10.0},
        {"train_set": "b", "family": "g", "seconds": 60.0},
    ]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert profile_run.time_shares(path) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("3 runs, 1.7 min")
    assert lines[1].split()[:2] == ["b", "g"] and lines[1].endswith("60.0 %")  # largest first
    assert "2 runs,   20.0 s a run (10.0-30.0),  40.0 %" in lines[2]


def test_compare_options_runs_all_off_each_on_and_all_on(monkeypatch, capsys) -> None:
    """``profile_run --compare A B``: the all-off run, each option alone, then both, every run
    passing each option explicitly (so a TrainConfig default cannot leak in), ratios against
    the all-off run."""
    import argparse

    profile_run = load("profile_run")
    seen: list[dict] = []

    def fake_run(family, overrides, margin, data, seed, rules, feats, base, plots):
        seen.append(dict(base))
        return {
            "seconds": 10.0 - 2 * sum(base.values()),
            "val_rsum": 1.0,
            "tests": {data: {rules[0]: {"rsum": 2.0}}},
            "math": "native",
            "mkl": "off",
        }

    monkeypatch.setattr(profile_run.quality, "one_run", fake_run)
    args = argparse.Namespace(family="fine_grained", margin=1.2, data="twemoji", seed=0)
    options = ["trim_padding", "sparse_backward"]
    assert profile_run.compare_options(args, {}, ["plain"], {}, options) == 0
    assert seen == [
        {"trim_padding": False, "sparse_backward": False},
        {"trim_padding": True, "sparse_backward": False},
        {"trim_padding": False, "sparse_backward": True},
        {"trim_padding": True, "sparse_backward": True},
    ]
    out = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0].strip() for line in out] == [
        "all off",
        "trim_padding",
        "sparse_backward",
        "trim_padding + sparse_backward",
    ]
    assert "(0.60x)" in out[-1]


def _row(family: str, margin: float, seed: int, rsum: float, train_set: str = "in") -> str:
    tests = {"in": {"plain": {"rsum": rsum}}, "shift": {"plain": {"rsum": rsum / 2}}}
    row = {"family": family, "margin": margin, "seed": seed, "train_set": train_set}
    return json.dumps(row | {"tests": tests}) + "\n"


def test_compare_rows_pairs_two_files_by_seed_and_names_what_it_leaves_out(
    tmp_path, capsys
) -> None:
    compare = load("compare_rows")
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text(
        _row("fine_grained", 0.8, 1, 100)
        + _row("fine_grained", 0.8, 2, 110)
        + _row("fine_grained", 1.2, 1, 999)
        + _row("fine_grained", 0.8, 3, 50)
    )
    b.write_text(_row("fine_grained", 0.8, 2, 116) + _row("fine_grained", 0.8, 1, 104))
    assert compare.main([f"{a}:fine_grained:0.8", f"{b}:fine_grained:0.8"]) == 0
    out, err = capsys.readouterr()
    assert "seeds 1, 2" in out and "left out: [3]" in err
    lines = {ln.split(" | ")[0]: ln for ln in out.splitlines() if ln.startswith("| ")}
    # seed 1: +4, seed 2: +6 -> mean +5.0, t(1) half width 12.706 * sqrt(2) / sqrt(2) = 12.7
    assert "+5.0 [-7.7, +17.7]" in lines["| in"] and "+4.0 / +6.0" in lines["| in"]
    assert "+2.5" in lines["| shift"]  # the other test set, read from its own rsum


def test_compare_rows_refuses_a_bad_arm_an_empty_arm_and_a_broken_row(tmp_path) -> None:
    compare = load("compare_rows")
    a = tmp_path / "a.jsonl"
    a.write_text(_row("fine_grained", 0.8, 1, 100) + "{oops\n")
    with pytest.raises(SystemExit, match=r"a.jsonl:2: not a JSON row"):
        compare.main([f"{a}:fine_grained:0.8", f"{a}:fine_grained:0.8"])
    a.write_text(_row("fine_grained", 0.8, 1, 100))
    with pytest.raises(SystemExit, match=r"no rows of gpo at margin 0\.8"):
        compare.main([f"{a}:gpo:0.8", f"{a}:fine_grained:0.8"])
    with pytest.raises(SystemExit):  # argparse: FILE:FAMILY:MARGIN expected
        compare.main([f"{a}:fine_grained", f"{a}:fine_grained:0.8"])


def test_compare_rows_keeps_the_runs_of_one_train_set_apart(tmp_path, capsys) -> None:
    compare = load("compare_rows")
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text(_row("global", 1.2, 1, 100, "x") + _row("global", 1.2, 1, 300, "y"))
    b.write_text(_row("global", 1.2, 1, 110, "x") + _row("global", 1.2, 1, 290, "y"))
    with pytest.raises(SystemExit, match=r"a.jsonl:2: a second .* --train-set"):
        compare.main([f"{a}:global:1.2", f"{b}:global:1.2"])
    assert compare.main([f"{a}:global:1.2", f"{b}:global:1.2", "--train-set", "y"]) == 0
    out = capsys.readouterr().out
    assert "| in | 300.0 | 290.0 |" in out and "-10.0" in out
    with pytest.raises(SystemExit, match=r"no rows of global at margin 1\.2 trained on z"):
        compare.main([f"{a}:global:1.2", f"{b}:global:1.2", "--train-set", "z"])


def test_compare_rows_never_pairs_runs_of_different_training_sets(tmp_path, capsys) -> None:
    compare = load("compare_rows")
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    # seeds that do not collide: without the check, seed 1 of x would pair with seed 1 of b
    a.write_text(_row("global", 1.2, 1, 100, "x") + _row("global", 1.2, 2, 300, "y"))
    b.write_text(_row("global", 1.2, 1, 110, "x") + _row("global", 1.2, 2, 120, "x"))
    with pytest.raises(SystemExit, match=r"a.jsonl: .*several sets: x \(line 1\), y \(line 2\)"):
        compare.main([f"{a}:global:1.2", f"{b}:global:1.2"])
    assert compare.main([f"{a}:global:1.2", f"{b}:global:1.2", "--train-set", "x"]) == 0
    assert "seeds 1\n" in capsys.readouterr().out
    a.write_text(_row("global", 1.2, 2, 300, "y"))  # one set per arm, but not the same one
    b.write_text(_row("global", 1.2, 2, 310, "z"))
    with pytest.raises(SystemExit):
        compare.main([f"{a}:global:1.2", f"{b}:global:1.2"])
    assert "arm A was trained on y, arm B on z" in capsys.readouterr().err


def test_compare_rows_refuses_a_rule_the_rows_lack(tmp_path) -> None:
    """The walkthrough's report: --rule weighted on baseline rows (or a typo) printed an
    empty table and exited 0."""
    compare = load("compare_rows")
    a = tmp_path / "a.jsonl"
    a.write_text(_row("fine_grained", 0.8, 1, 100))
    with pytest.raises(SystemExit, match=r"no 'weighted' scores \(rules there: plain\)"):
        compare.main([f"{a}:fine_grained:0.8", f"{a}:fine_grained:0.8", "--rule", "weighted"])
    with pytest.raises(SystemExit) as info:  # not a rule at all: argparse's choices
        compare.main([f"{a}:fine_grained:0.8", f"{a}:fine_grained:0.8", "--rule", "bogus"])
    assert info.value.code == 2


def test_curves_without_histories_is_an_error_not_a_blank_figure(tmp_path, capsys) -> None:
    curves = load("curves")
    rows = tmp_path / "r.jsonl"
    rows.write_text(_row("fine_grained", 0.8, 0, 100))
    with pytest.raises(SystemExit) as info:
        curves.main(["--results", str(rows), "--histories", str(tmp_path / "none"),
                     "--out", str(tmp_path / "c.png")])  # fmt: skip
    assert info.value.code == 2 and "no histories there" in capsys.readouterr().err
    assert not (tmp_path / "c.png").exists()
