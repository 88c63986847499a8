"""The run-folder guard of the library: train() refuses an existing run unless resume or
overwrite; an overwrite that fails before its first checkpoint puts the old run back."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from picoalign.config import load_config
from picoalign.fileio import foreign_entries
from picoalign.training.loop import TrainingError, train
from picoalign.training.runs import (
    RUN_FILES,
    Replacement,
    RunExistsError,
    check_run_folder,
)

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def cfg(out: Path, **over):
    base = {
        "out": str(out), "epochs": 1, "batch_size": 8, "device": "cpu", "amp": False,
        "progress": False, "model.embed_dim": 8, "model.method": "baseline",
    }  # fmt: skip
    return load_config(None, {**base, **over})


def test_train_api_refuses_an_existing_run(tmp_path: Path, make_feature_set) -> None:
    fs = make_feature_set(n=16)
    train(cfg(tmp_path), fs)
    before = (tmp_path / "metrics.jsonl").read_text()
    with pytest.raises(RunExistsError, match="already holds a run"):
        train(cfg(tmp_path), fs)
    assert (tmp_path / "metrics.jsonl").read_text() == before
    train(cfg(tmp_path, epochs=2), fs, overwrite=True)
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2


def test_failed_overwrite_restores_the_old_run(tmp_path: Path, make_feature_set) -> None:
    run = tmp_path / "run"
    fs = make_feature_set(n=16)
    train(cfg(run, seed=5), fs)
    bad = make_feature_set(n=16)
    bad.texts.tokens[:] = float("nan")
    with pytest.raises(TrainingError):
        train(cfg(run), bad, overwrite=True)
    assert load_config(run / "config.yaml").seed == 5
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def _genuine(out: Path, marker: str) -> None:
    """What a run writes for ``marker``: its full config.yaml, or a model in last/ or best/."""
    from picoalign.config.loading import dump_config

    if marker == "config.yaml":
        (out / marker).write_text(dump_config(cfg(out)))
    else:
        (out / marker).mkdir()
        (out / marker / "config.json").write_text("{}")


@pytest.mark.parametrize("marker", ["config.yaml", "last", "best"])
def test_every_run_marker_makes_a_run_folder(tmp_path: Path, marker: str) -> None:
    _genuine(tmp_path, marker)
    (tmp_path / "metrics.jsonl").write_text("")
    with pytest.raises(RunExistsError, match=marker):
        check_run_folder(tmp_path, resume=False, overwrite=False)
    check_run_folder(tmp_path, resume=True, overwrite=False)
    check_run_folder(tmp_path, resume=False, overwrite=True)


@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize(
    ("name", "content"),
    [("config.yaml", "# my tuned settings\nepochs: 1\nmargin: 0.4\n"), ("metrics.csv", "a,b\n")],
)
def test_a_users_file_with_a_runs_name_is_not_a_run(
    tmp_path: Path, make_feature_set, overwrite: bool, name: str, content: str
) -> None:
    """The adversarial test: a user's config.yaml (or metrics.csv) alone made the folder "a
    run", the message said to --overwrite it, and that deleted the user's file."""
    (tmp_path / name).write_text(content)
    with pytest.raises(ValueError, match=rf"does not write \({name}; their names are a run's"):
        train(cfg(tmp_path), make_feature_set(n=16), overwrite=overwrite)
    assert (tmp_path / name).read_text() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_a_users_file_inside_best_or_last_is_never_replaced(
    tmp_path: Path, make_feature_set
) -> None:
    """A resume or an overwrite replaces best/ and last/ whole: NOTES.txt in them went too."""
    fs = make_feature_set(n=16)
    train(cfg(tmp_path), fs)
    (tmp_path / "best" / "NOTES.txt").write_text("mine")
    (tmp_path / "last" / ".DS_Store").write_text("the system's")  # hidden: not refused
    for kwargs, what in (({"resume": True}, "a resume"), ({"overwrite": True}, "a new run")):
        with pytest.raises(
            ValueError,
            match=rf"yours inside the run \(best/NOTES.txt\), which {what} would delete.*move",
        ):
            train(cfg(tmp_path, epochs=2), fs, **kwargs)
    assert (tmp_path / "best" / "NOTES.txt").read_text() == "mine"
    (tmp_path / "best" / "NOTES.txt").unlink()
    train(cfg(tmp_path, epochs=2), fs, resume=True)  # moved out: the resume runs


def test_a_run_killed_before_its_first_checkpoint_says_how_to_start_again(tmp_path: Path) -> None:
    _genuine(tmp_path, "config.yaml")  # with data.json: what a kill -9 that early leaves
    (tmp_path / "data.json").write_text("{}")
    with pytest.raises(RunExistsError, match=r"stopped before its first checkpoint .*--overwrite"):
        check_run_folder(tmp_path, resume=False, overwrite=False)
    check_run_folder(tmp_path, resume=False, overwrite=True)


def test_an_empty_folder_or_a_kills_leftovers_are_fine(tmp_path: Path) -> None:
    check_run_folder(tmp_path, resume=False, overwrite=False)
    (tmp_path / ".metrics.jsonl.x1y2.tmp").write_text("")  # what a killed atomic write leaves
    (tmp_path / ".last.old").mkdir()
    check_run_folder(tmp_path, resume=False, overwrite=False)
    assert foreign_entries(tmp_path, RUN_FILES) == []


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_folder_with_the_users_own_files_is_refused(tmp_path: Path, overwrite: bool) -> None:
    """``--out`` at a data or project folder: a run is never mixed into it, and an
    ``--overwrite`` (which would move the folder aside and delete it) never takes it."""
    (tmp_path / "photo.png").write_text("mine")
    (tmp_path / "config.yaml").write_text("my own config")  # also looks like a run marker
    with pytest.raises(ValueError, match=r"does not write \(photo.png\)"):
        check_run_folder(tmp_path, resume=False, overwrite=overwrite)
    r = Replacement(tmp_path)
    with pytest.raises(ValueError, match=r"photo\.png"):  # and the replacement checks again
        r.begin()
    assert (tmp_path / "photo.png").read_text() == "mine" and r.aside is None


def test_overwrite_of_a_run_in_a_users_folder_keeps_their_files(
    tmp_path: Path, make_feature_set
) -> None:
    fs = make_feature_set(n=16)
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "photo.png").write_text("mine")
    with pytest.raises(ValueError, match=r"photo\.png"):
        train(cfg(folder), fs)
    with pytest.raises(ValueError, match=r"photo\.png"):
        train(cfg(folder), fs, overwrite=True)
    assert sorted(p.name for p in folder.iterdir()) == ["photo.png"]


def test_replacement_commit_deletes_and_abort_restores(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    _genuine(run, "best")
    (run / "metrics.jsonl").write_text("old")
    r = Replacement(run)
    r.begin()
    assert not run.exists() and r.aside is not None and r.aside.is_dir()
    run.mkdir()
    (run / "metrics.jsonl").write_text("new")
    r.abort()
    assert (run / "metrics.jsonl").read_text() == "old"
    r = Replacement(run)
    r.begin()
    aside = r.aside
    r.commit()
    assert aside is not None and not aside.exists()


def test_pico_warmup_steps_are_added_to_the_warmup_epochs(tmp_path: Path, make_feature_set) -> None:
    """Issue 14: ``--set model.pico.warmup_steps=5`` used to be overwritten by the trainer;
    it is honoured, on top of ``pico_warmup_epochs`` × steps per epoch (docs/cli.md)."""
    fs = make_feature_set(n=16)  # 8 train images x 2 captions, batch 8: 2 steps per epoch
    over = {"model.method": "pico", "pico_warmup_epochs": 1, "model.pico.warmup_steps": 5}
    result = train(cfg(tmp_path, **over), fs)
    assert result.model.config.pico.warmup_steps == 1 * 2 + 5
    assert load_config(tmp_path / "config.yaml").model.pico.warmup_steps == 5  # as given


def test_a_feature_width_set_in_python_is_checked_not_overwritten(
    tmp_path: Path, make_feature_set
) -> None:
    with pytest.raises(ValueError, match=r"model\.image_dim=99 differs from the features"):
        c = cfg(tmp_path)
        c = dataclasses.replace(c, model=dataclasses.replace(c.model, image_dim=99))
        train(c, make_feature_set(n=16), write=False)


def test_the_run_lock_leaves_no_file_and_names_an_unwritable_out(tmp_path: Path) -> None:
    from picoalign.fileio import WriteError
    from picoalign.training.runs import RunInUseError, run_lock

    held = run_lock(tmp_path / "run")
    held.__enter__()
    with pytest.raises(RunInUseError, match="another picoalign process"):
        run_lock(tmp_path / "run").__enter__()
    held.__exit__(None, None, None)
    assert list(tmp_path.iterdir()) == []  # the lock's file goes with its holder
    (tmp_path / "file").write_text("mine")
    with pytest.raises(WriteError, match=r"^--out .*file/run: cannot create the folder"):
        run_lock(tmp_path / "file" / "run").__enter__()


@pytest.mark.parametrize("existed", [False, True])
def test_a_new_run_stopped_before_its_first_checkpoint_leaves_nothing(
    tmp_path: Path, existed: bool
) -> None:
    """The walkthrough's report: a Ctrl-C between the run's first files and its first
    checkpoint left config.yaml, data.json and numerics.json, so the same command was
    refused ("already holds a run") and so was --resume ("no checkpoint")."""
    run = tmp_path / "run"
    if existed:  # an empty folder the user made for it stays
        run.mkdir()
    r = Replacement(run)
    r.begin()
    run.mkdir(exist_ok=True)
    for name in ("config.yaml", "data.json", "numerics.json", "metrics.csv"):
        (run / name).write_text("new")
    r.abort()
    assert (sorted(run.iterdir()) == []) if existed else not run.exists()
    check_run_folder(run, resume=False, overwrite=False)  # the same command may start again


def test_a_new_run_after_its_first_checkpoint_is_kept_and_a_foreign_file_stays(
    tmp_path: Path,
) -> None:
    run = tmp_path / "run"
    r = Replacement(run)
    r.begin()
    run.mkdir()
    (run / "config.yaml").write_text("new")
    r.commit()  # the first checkpoint
    r.abort()  # a later error: the run is the user's now
    assert (run / "config.yaml").exists()
    other = tmp_path / "other"
    r = Replacement(other)
    r.begin()
    other.mkdir()
    (other / "config.yaml").write_text("new")
    (other / "notes.txt").write_text("appeared meanwhile")
    r.abort()
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]


def test_an_error_in_the_first_epoch_of_a_new_run_leaves_no_run(
    tmp_path: Path, make_feature_set, monkeypatch: pytest.MonkeyPatch
) -> None:
    from picoalign.training import loop

    def fail(run: object, epoch: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "_train_epoch", fail)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(cfg(out), make_feature_set(n=16))
    assert not out.exists()


def test_a_run_reached_through_a_link_is_one_folder(tmp_path: Path, make_feature_set) -> None:
    """The adversarial test: `--out link` and `--out real` took two locks, so two processes
    trained into one folder; `--overwrite` through the link renamed the link itself, made a
    new folder in its place and left the old run where it was."""
    from picoalign.training.runs import RunInUseError, run_lock

    fs = make_feature_set(n=16)
    real, link = tmp_path / "real", tmp_path / "link"
    real.mkdir()
    link.symlink_to(real)
    with run_lock(real), pytest.raises(RunInUseError, match="another picoalign process"):
        train(cfg(link), fs)
    train(cfg(link), fs)
    assert (real / "best").is_dir() and link.is_symlink()
    train(cfg(link, epochs=2), fs, overwrite=True)
    assert link.is_symlink() and len((real / "metrics.jsonl").read_text().splitlines()) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"]  # nothing aside
