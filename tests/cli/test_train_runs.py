"""Issue 14, run side: a run folder is never lost — refused without --resume/--overwrite,
--resume continues on the run's own config.yaml, Ctrl-C says how to resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cli_runner import TOY_ENCODERS, one_thread_with_cache, run_cli, toy_train_argv
from picoalign.config import TrainConfig, load_config
from picoalign.training import loop

ENCODERS = list(TOY_ENCODERS)


def train_argv(data: Path, out: Path, epochs: int = 2, *extra: str) -> list[str]:
    return toy_train_argv(data, out, *extra, epochs=epochs)


@pytest.fixture(scope="module")
def ref(tmp_path_factory, write_jsonl_dataset):
    """An uninterrupted 2-epoch run (the reference of the resume tests)."""
    tmp = tmp_path_factory.mktemp("runs")
    data = write_jsonl_dataset(tmp / "data")
    with one_thread_with_cache(tmp / "cache"):
        rc, _, err = run_cli(*train_argv(data, tmp / "ref"))
        assert rc == 0, err
    return {"tmp": tmp, "data": data, "run": tmp / "ref"}


@pytest.fixture(autouse=True)
def env(ref, monkeypatch):
    monkeypatch.setenv("PICOALIGN_CACHE", str(ref["tmp"] / "cache"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def rows(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(r).items() if k != "seconds"} for r in lines]


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def one_error_line(err: str) -> str:
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("picoalign: error: "), err
    return lines[0]


def interrupt_after_epoch(monkeypatch, n: int) -> None:
    """Ctrl-C right after epoch ``n``'s checkpoint (as a user pressing it then would)."""
    real = loop._evaluate_and_save

    def save_then_interrupt(run, epoch, row):
        real(run, epoch, row)
        if epoch + 1 == n:
            raise KeyboardInterrupt

    monkeypatch.setattr(loop, "_evaluate_and_save", save_then_interrupt)


def test_train_into_an_existing_run_is_refused_and_leaves_it_intact(ref, tmp_path) -> None:
    run = tmp_path / "run"
    assert run_cli(*train_argv(ref["data"], run, 1))[0] == 0
    before = (run / "metrics.jsonl").read_text()
    rc, _, err = run_cli(*train_argv(ref["data"], run, 2))
    line = one_error_line(err)
    assert rc == 2 and "already holds a run" in line
    assert "--resume" in line and "--overwrite" in line and str(run) in line
    assert (run / "metrics.jsonl").read_text() == before
    assert load_config(run / "config.yaml").epochs == 1


def test_overwrite_replaces_the_run_after_saying_so(ref, tmp_path) -> None:
    run = tmp_path / "run"
    assert run_cli(*train_argv(ref["data"], run, 1, "--set", "seed=3"))[0] == 0
    rc, _, err = run_cli(*train_argv(ref["data"], run, 2, "--overwrite"))
    assert rc == 0, err
    assert "replacing the run in" in err
    assert load_config(run / "config.yaml").seed == 0
    assert len(rows(run)) == 2
    # the old run is gone
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert same_weights(run / "last", ref["run"] / "last")


def test_overwrite_stopped_before_its_first_checkpoint_keeps_the_old_run(
    ref, tmp_path, monkeypatch
) -> None:
    run = tmp_path / "run"
    assert run_cli(*train_argv(ref["data"], run, 1))[0] == 0
    before = (run / "metrics.jsonl").read_text()

    def interrupted(run_, epoch):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "_train_epoch", interrupted)
    rc, _, err = run_cli(*train_argv(ref["data"], run, 2, "--overwrite"))
    assert rc == 130 and "Traceback" not in err
    # not "continue with --resume": that would continue the old run, not the one started
    assert "previous run" in err and "back as it was" in err and "--resume" not in err
    assert (run / "metrics.jsonl").read_text() == before
    assert load_config(run / "config.yaml").epochs == 1
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_stop_signal_before_the_first_checkpoint_keeps_the_old_run_as_ctrl_c_does(
    ref, tmp_path, monkeypatch, signum
) -> None:
    """The adversarial test: `kill` (SIGTERM) or a closed terminal (SIGHUP) during an
    --overwrite left the old run hidden in its aside folder and a stub that refused both a
    re-run and --resume; a new run left the same stub."""
    run = tmp_path / "run"
    assert run_cli(*train_argv(ref["data"], run, 1))[0] == 0
    before = (run / "metrics.jsonl").read_text()

    def killed(run_, epoch):
        os.kill(os.getpid(), signum)  # delivered here, in the main thread, as a signal is
        raise AssertionError("the signal did not stop the command")

    monkeypatch.setattr(loop, "_train_epoch", killed)
    rc, _, err = run_cli(*train_argv(ref["data"], run, 2, "--overwrite"))
    assert rc == 128 + signum and "Traceback" not in err, err
    assert "previous run" in err and "back as it was" in err
    assert (run / "metrics.jsonl").read_text() == before
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    fresh = tmp_path / "fresh"
    rc, _, err = run_cli(*train_argv(ref["data"], fresh, 2))
    assert rc == 128 + signum and not fresh.exists(), err  # nothing of a new run is left
    assert signal.getsignal(signum) is signal.SIG_DFL or callable(signal.getsignal(signum))
    assert getattr(signal.getsignal(signum), "__name__", "") != "stop"  # handler put back


def test_a_resume_stopped_before_its_checkpoint_says_to_give_its_epochs_again(
    ref, tmp_path, monkeypatch
) -> None:
    """The re-test: Ctrl-C early in `--resume --epochs 3` (the run left as it was, at 2)
    said "continue with: ... --resume", which then ended at 2 epochs; and a path with a
    space was printed unquoted, so the command could not be pasted."""
    run = tmp_path / "my run"
    shutil.copytree(ref["run"], run)
    config = (run / "config.yaml").read_text().replace(str(ref["run"]), str(run))
    (run / "config.yaml").write_text(config)

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "_train_step", stopped)
    rc, _, err = run_cli("train", "--out", str(run), "--resume", "--epochs", "3", "--no-progress")
    assert rc == 130, err
    assert f"continue with: picoalign train --out '{run}' --resume --epochs 3" in err, err
    assert (run / "config.yaml").read_text() == config


def test_train_into_a_closed_pipe_says_where_it_stopped(ref, tmp_path) -> None:
    """`picoalign train ... | head -2` ended training at the third epoch line with exit 141
    and not a word: the run was half-trained, with no best/ (select=last) and no hint."""
    run = tmp_path / "run"
    argv = train_argv(ref["data"], run, 60)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # PICOALIGN_CACHE: the env fixture's
    with subprocess.Popen(
        [sys.executable, "-m", "picoalign", *argv],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    ) as proc:  # fmt: skip
        assert proc.stdout is not None and proc.stdout.readline().startswith("epoch   1")
        proc.stdout.close()  # as `head -1` exits
        err = proc.stderr.read() if proc.stderr else ""
    assert proc.returncode == 141 and "Traceback" not in err, err
    said = "its output was closed (a `| head` that had its lines?); continue with: picoalign"
    assert f"{said} train --out {run} --resume" in err
    assert 1 <= len(rows(run)) < 60


def test_an_out_under_a_literal_tilde_is_the_home_folder(ref, tmp_path, monkeypatch) -> None:
    """The re-test: `--out '~/r'` (quoted, or `out: ~/r` in a config file) trained into the
    home folder but drew training.png into a folder named "~" in the current one, and
    `--resume` said there was no run."""
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    assert run_cli(*train_argv(ref["data"], Path("~/r"), 1))[0] == 0
    assert (home / "r" / "training.png").is_file() and list(cwd.iterdir()) == []
    rc, _, err = run_cli("train", "--out", "~/r", "--resume", "--epochs", "2", "--no-progress")
    assert rc == 0 and len(rows(home / "r")) == 2, err


def test_resume_and_overwrite_exclude_each_other(ref, tmp_path) -> None:
    rc, _, err = run_cli(*train_argv(ref["data"], tmp_path / "r", 1, "--resume", "--overwrite"))
    assert rc == 2 and "exclude each other" in one_error_line(err)


def test_ctrl_c_prints_the_resume_command_and_out_resume_alone_is_bit_identical(
    ref, tmp_path, monkeypatch
) -> None:
    """The user report: `train --out RUN --resume` without the other flags resumed on the
    defaults (Twemoji, 12 epochs). Now it continues on the run's config.yaml, exactly."""
    run = tmp_path / "run"
    interrupt_after_epoch(monkeypatch, 1)
    rc, _, err = run_cli(*train_argv(ref["data"], run, 2))
    assert rc == 130 and "Traceback" not in err
    assert f"picoalign train --out {run} --resume" in err
    assert len(rows(run)) == 1
    monkeypatch.undo()
    monkeypatch.setenv("PICOALIGN_CACHE", str(ref["tmp"] / "cache"))

    rc, _, err = run_cli("train", "--out", str(run), "--resume", "--no-progress")
    assert rc == 0, err
    saved = load_config(run / "config.yaml")
    assert saved.data == f"jsonl:{ref['data']}" and saved.epochs == 2
    assert saved.model.embed_dim == 16 and saved.model.image_encoder == "random-conv"
    assert rows(run) == rows(ref["run"])
    assert same_weights(run / "last", ref["run"] / "last")
    assert same_weights(run / "best", ref["run"] / "best")
    assert (run / "training.png").read_bytes()[:4] == b"\x89PNG"


def test_a_plotting_problem_warns_and_the_run_still_succeeds(ref, tmp_path, monkeypatch) -> None:
    from picoalign.cli import plots

    def broken(*args, **kwargs):
        raise RuntimeError("no display backend")

    monkeypatch.setattr(plots, "plot_training", broken)
    rc, out, err = run_cli(*train_argv(ref["data"], tmp_path / "run", 1))
    assert rc == 0 and "model saved in" in out
    assert "warning:" in err and "training.png not written" in err and "Traceback" not in err


def test_ctrl_c_while_the_plot_is_drawn_says_the_run_is_complete(
    ref, tmp_path, monkeypatch
) -> None:
    """The gallery walkthrough: Ctrl-C in the last second of `train` (drawing training.png,
    best/ already saved) printed a bare "interrupted", as if the run were lost."""
    from picoalign.cli import plots

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(plots, "plot_training", stopped)
    run = tmp_path / "run"
    rc, _, err = run_cli(*train_argv(ref["data"], run, 1))
    assert rc == 130 and "Traceback" not in err, err
    assert f"the run itself is complete (model saved in {run}/best)" in err
    assert (run / "best" / "model.safetensors").is_file()


def test_resume_may_add_epochs(ref, tmp_path) -> None:
    run = tmp_path / "run"
    assert run_cli(*train_argv(ref["data"], run, 1))[0] == 0
    rc, _, err = run_cli("train", "--out", str(run), "--resume", "--epochs", "2", "--no-progress")
    assert rc == 0, err
    assert rows(run) == rows(ref["run"])
    assert load_config(run / "config.yaml").epochs == 2


@pytest.mark.parametrize(
    "flags, expect",
    [
        (["--data", "twemoji"], "--data twemoji differs from the run's jsonl:"),
        (["--lr", "0.5"], f"--lr 0.5 differs from the run's {TrainConfig().lr}"),
        (["--scorer", "gpo"], "--scorer gpo differs from the run's fine_grained"),
        (["--batch-size", "4"], "--batch-size 4 differs from the run's 8"),
        (["--set", "model.embed_dim=32"], "--set model.embed_dim=32 differs from the run's 16"),
    ],
    ids=["data", "lr", "scorer", "batch-size", "set"],
)
def test_resume_refuses_a_change_that_makes_another_run(ref, tmp_path, flags, expect) -> None:
    run = tmp_path / "run"
    assert run_cli(*train_argv(ref["data"], run, 1))[0] == 0
    before = (run / "config.yaml").read_text()
    rc, _, err = run_cli("train", "--out", str(run), "--resume", *flags)
    assert rc == 2 and expect in one_error_line(err)
    assert (run / "config.yaml").read_text() == before


def test_resume_names_a_change_from_a_config_file_by_the_file(ref, tmp_path) -> None:
    """The adversarial test: `--resume --config c.yaml` with `lr: 0.01` in the file said
    "--lr 0.01 differs", a flag the user never gave."""
    run = tmp_path / "run"
    assert run_cli(*train_argv(ref["data"], run, 1))[0] == 0
    conf = tmp_path / "c.yaml"
    conf.write_text("lr: 0.01\n")
    rc, _, err = run_cli("train", "--out", str(run), "--resume", "--config", str(conf))
    line = one_error_line(err)
    assert rc == 2 and f"{conf}: lr: 0.01 differs from the run's" in line and "--lr" not in line
    rc, _, err = run_cli(
        "train", "--out", str(run), "--resume", "--config", str(conf), "--lr", "0.02"
    )
    assert rc == 2 and "--lr 0.02 differs" in one_error_line(err)  # the flag wins, and is named


def test_resume_with_a_missing_image_says_to_put_it_back_not_to_skip_it(ref, tmp_path) -> None:
    """The adversarial test: --resume said "fix it, or pass --skip-bad", and --resume
    --skip-bad was then refused as a change of the run's options."""
    import shutil

    data = tmp_path / "data" / ref["data"].name
    shutil.copytree(ref["data"].parent, data.parent)
    run = tmp_path / "run"
    assert run_cli(*train_argv(data, run, 1))[0] == 0
    image = data.parent / json.loads(data.read_text().splitlines()[0])["image"]
    image.unlink()
    rc, _, err = run_cli("train", "--out", str(run), "--resume", "--epochs", "2", "--no-progress")
    line = one_error_line(err)
    assert rc == 2 and "--skip-bad" not in line and "put it back as it was" in line, err
    assert image.name in line


def test_a_run_left_aside_by_a_killed_overwrite_is_named(ref, tmp_path) -> None:
    """A `kill -9` during an --overwrite leaves the old run in .RUN.replaced-…, which no later
    command mentioned."""
    run = tmp_path / "run"
    aside = tmp_path / ".run.replaced-20261207-233807-28530"
    aside.mkdir()
    with pytest.warns(UserWarning, match=rf"{aside.name} holds the run that was in .*run before"):
        rc, _, err = run_cli(*train_argv(ref["data"], run, 1))
    assert rc == 0, err


def test_resume_refuses_data_edited_in_place(ref, tmp_path) -> None:
    """The user report: a caption edited in the data file between two runs of the same spec
    was resumed silently, and data.json lost the record of what the first epochs saw."""
    import shutil

    data = tmp_path / "data" / ref["data"].name
    shutil.copytree(ref["data"].parent, data.parent)
    run = tmp_path / "run"
    assert run_cli(*train_argv(data, run, 1))[0] == 0
    before = {f: (run / f).read_text() for f in ("config.yaml", "data.json", "metrics.jsonl")}
    lines = data.read_text().splitlines()
    first = json.loads(lines[0])
    first["captions"][0] += " again"
    data.write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")
    rc, _, err = run_cli("train", "--out", str(run), "--resume", "--epochs", "2", "--no-progress")
    assert rc == 2 and "the data of" in one_error_line(err) and "changed since" in err
    assert {f: (run / f).read_text() for f in before} == before
    # the same items, image files touched (a copy that did not keep the times): a warning
    data.write_text("\n".join(lines) + "\n")
    image = data.parent / first["image"]
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))
    rc, _, err = run_cli("train", "--out", str(run), "--resume", "--epochs", "2", "--no-progress")
    assert rc == 0 and "warning: --resume: the same images and captions" in err
    assert len(rows(run)) == 2


def test_resume_with_fewer_epochs_than_trained_is_refused_and_keeps_the_config(
    ref, tmp_path
) -> None:
    """The user report: --resume --epochs 1 on a 2-epoch run said "model saved" and wrote
    epochs: 1 into config.yaml, so the run's own config no longer made the run."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(ref["run"], run)
    before = (run / "config.yaml").read_text()
    rc, _, err = run_cli("train", "--out", str(run), "--resume", "--epochs", "1", "--no-progress")
    assert rc == 2 and "has already trained 2 epochs" in one_error_line(err)
    assert (run / "config.yaml").read_text() == before


def test_resume_without_a_run_names_the_folder(tmp_path) -> None:
    rc, _, err = run_cli("train", "--out", str(tmp_path / "none"), "--resume")
    assert rc == 2 and "config.yaml not found" in one_error_line(err)


@pytest.mark.parametrize(
    "setting, expect",
    [
        ("model.pico.feedback=maybe", "--set model.pico.feedback=maybe: Input should be a valid"),
        ("model.pico.lam=high", "--set model.pico.lam=high: Input should be a valid number"),
        ("lr_steps=8", "--set lr_steps=8: Input should be a valid list (write a list"),
        ("model.image_dim=64", "--set model.image_dim=64: not settable"),
        ("lr_steps=[1,", "--set lr_steps=[1,: not a value YAML can read ("),
    ],
    ids=["bool", "number", "list", "derived", "yaml"],
)
def test_typed_set_values_fail_in_one_line_before_anything_is_written(
    ref, tmp_path, setting, expect
) -> None:
    """The user reports: feedback=maybe was saved into the checkpoint, lam=high and
    lr_steps=8 crashed with tracebacks."""
    run = tmp_path / "run"
    rc, _, err = run_cli(*train_argv(ref["data"], run, 1, "--set", setting))
    assert rc == 2 and expect in one_error_line(err)
    assert not run.exists()


def test_runs_and_indexes_store_absolute_paths_and_work_from_another_folder(
    ref, tmp_path, monkeypatch
) -> None:
    """The user report: `evaluate --checkpoint ../runs/a` from another folder failed with
    `shapes/data.jsonl: file not found` (config.yaml stored the path as typed)."""
    import shutil

    work, other = tmp_path / "work", tmp_path / "other"
    shutil.copytree(ref["data"].parent, work / "shapes")
    other.mkdir()
    monkeypatch.chdir(work)
    rc, _, err = run_cli(
        "train", "--data", "jsonl:shapes/data.jsonl", *ENCODERS, "--epochs", "1",
        "--batch-size", "8", "--no-progress", "--set", "model.embed_dim=16",
        "--set", "cache_dir=cache", "--out", "runs/a",
    )  # fmt: skip
    assert rc == 0, err
    saved = load_config(work / "runs" / "a" / "config.yaml")
    assert saved.data == f"jsonl:{work / 'shapes' / 'data.jsonl'}"
    assert saved.out == str(work / "runs" / "a") and saved.cache_dir == str(work / "cache")
    rc, _, err = run_cli(
        "index", "--checkpoint", "runs/a", "--data", "jsonl:shapes/data.jsonl",
        "--out", "gallery", "--no-progress",
    )  # fmt: skip
    assert rc == 0, err
    manifest = json.loads((work / "gallery" / "manifest.json").read_text())
    assert manifest["dataset"]["spec"] == saved.data
    assert all(Path(s).is_absolute() for s in manifest["sources"])

    monkeypatch.chdir(other)
    rc, out, err = run_cli("evaluate", "--checkpoint", "../work/runs/a", "--json")
    assert rc == 0, err
    assert "rsum" in json.loads(out)
    rc, out, err = run_cli("search", "--index", "../work/gallery", "--text", "a red circle")
    assert rc == 0, err


def test_absolute_data_specs_keep_their_options(tmp_path, monkeypatch) -> None:
    from picoalign.config.paths import absolute_spec

    monkeypatch.chdir(tmp_path)
    got = absolute_spec("jsonl:d/data.jsonl:val=strict:default-split=train")
    assert got == f"jsonl:{tmp_path}/d/data.jsonl:val=strict:default-split=train"
    assert absolute_spec("scenes:twemoji:size=100") == "scenes:twemoji:size=100"
    # the CLI walkthrough: "cfg/../data.jsonl" was stored as given, so a resume naming the
    # same file as "data.jsonl" was refused as other data
    assert absolute_spec("jsonl:cfg/../d/data.jsonl") == f"jsonl:{tmp_path}/d/data.jsonl"
    # the re-test: after a link, ".." is the parent of where the link points; taking it out
    # as text (os.path.abspath) named another folder's file, and train read it
    (tmp_path / "real" / "sub").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "real" / "sub")
    kept = absolute_spec("jsonl:link/../data.jsonl")
    assert kept == f"jsonl:{tmp_path}/link/../data.jsonl"


def test_resume_accepts_the_same_data_spelled_through_dot_dot(ref, tmp_path) -> None:
    data = f"jsonl:{ref['data']}"
    dotted = f"jsonl:{ref['data'].parent}/../{ref['data'].parent.name}/{ref['data'].name}"
    rc, _, err = run_cli(*toy_train_argv(ref["data"], tmp_path / "run", epochs=1))
    assert rc == 0, err
    rc, _, err = run_cli("train", "--out", str(tmp_path / "run"), "--resume", "--epochs", "2",
                         "--data", dotted, "--no-progress")  # fmt: skip
    assert rc == 0, err
    assert data in (tmp_path / "run" / "config.yaml").read_text()


def test_set_without_a_key_is_a_usage_error(tmp_path, capsys) -> None:
    from picoalign.cli.commands import main

    with pytest.raises(SystemExit) as stop:  # was "overrides: unknown key(s) ; known: ..."
        main(["train", "--set", "=3", "--out", str(tmp_path / "r")])
    assert stop.value.code == 2
    assert "--set expects KEY=VALUE, got '=3': no KEY" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["many", "0"])
def test_epochs_flag_takes_an_integer_or_auto(tmp_path, value, capsys) -> None:
    from picoalign.cli.commands import main

    with pytest.raises(SystemExit) as info:  # argparse's own usage error
        main(["train", "--epochs", value, "--out", str(tmp_path / "run")])
    assert info.value.code == 2
    assert "argument --epochs: expected an integer" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_epochs_auto_is_resolved_and_a_resume_keeps_the_number(ref, tmp_path) -> None:
    run = tmp_path / "run"
    argv = train_argv(ref["data"], run, 1)
    argv[argv.index("--epochs") + 1] = "auto"
    rc, _, err = run_cli(*argv, "--set", "lr_steps=[]")
    assert rc == 0, err
    (line,) = [x for x in err.splitlines() if "epochs=auto" in x]
    epochs = load_config(run / "config.yaml").epochs
    assert isinstance(epochs, int) and f"epochs=auto: {epochs} epochs" in line
    assert len(rows(run)) == epochs
    rc, _, err = run_cli("train", "--out", str(run), "--resume", "--no-progress")
    assert rc == 0 and len(rows(run)) == epochs  # nothing left to train: the run is whole


def test_a_run_being_trained_is_not_resumed_by_a_second_process(ref, tmp_path) -> None:
    """The user report: `--resume` started while the run was still training trained alongside
    it, then died on the other's folder swap. Now the second writer is refused up front."""
    import shutil

    from picoalign.training.runs import run_lock

    run = tmp_path / "run"
    shutil.copytree(ref["run"], run)
    before = (run / "config.yaml").read_text()
    with run_lock(run):  # as the training process holds it
        rc, _, err = run_cli("train", "--out", str(run), "--resume", "--epochs", "3")
        assert rc == 2 and "another picoalign process is training into it" in one_error_line(err)
        rc, _, err = run_cli(*train_argv(ref["data"], run, 1, "--overwrite"))
        assert rc == 2 and "another picoalign process" in one_error_line(err)
    assert (run / "config.yaml").read_text() == before
    rc, _, err = run_cli("train", "--out", str(run), "--resume", "--epochs", "3", "--no-progress")
    assert rc == 0, err  # the lock ends with its holder
    assert len(rows(run)) == 3


def test_a_config_files_missing_data_path_names_the_file_and_how_paths_resolve(
    tmp_path: Path, monkeypatch
) -> None:
    """The walkthrough's report: `train --config sub/my.yaml` from another folder said only
    "/tmp/ds/data.jsonl: file not found", naming neither the config nor its data: key."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "my.yaml").write_text("data: jsonl:ds/data.jsonl\nout: runs/x\n")
    monkeypatch.chdir(tmp_path)
    rc, _, err = run_cli("train", "--config", "sub/my.yaml")
    assert rc == 2
    assert "sub/my.yaml: data: jsonl:ds/data.jsonl: ds/data.jsonl not found" in err
    assert f"read from the folder picoalign runs in ({tmp_path})" in err
    assert not (tmp_path / "runs").exists()
