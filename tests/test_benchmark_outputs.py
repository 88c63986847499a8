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
