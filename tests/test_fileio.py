"""Atomic writes (no temp files left, old file kept on failure) and code-free loading."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from picoalign.fileio import (
    atomic_replace_dir,
    atomic_torch_save,
    atomic_write,
    atomic_write_json,
    atomic_write_safetensors,
    atomic_write_text,
    check_out_folder,
    foreign_entries,
    name_list,
    recover_dir,
    safe_torch_load,
)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_atomic_writes_succeed_without_temp_files(tmp_path: Path) -> None:
    t = {"a": torch.arange(6.0).view(2, 3)[:, 1:], "b": torch.ones(2, dtype=torch.bool)}
    atomic_write_safetensors(t, tmp_path / "w.safetensors")  # non-contiguous input is fine
    back = load_file(str(tmp_path / "w.safetensors"))
    assert torch.equal(back["a"], t["a"]) and torch.equal(back["b"], t["b"])

    atomic_write_json({"x": [1, 2], "y": "é"}, tmp_path / "c.json")
    assert (tmp_path / "c.json").read_text().endswith("\n")
    atomic_write_text("hello\n", tmp_path / "sub" / "dir" / "t.txt")  # parents are created
    assert (tmp_path / "sub" / "dir" / "t.txt").read_text() == "hello\n"
    atomic_torch_save({"epoch": 3, "t": torch.zeros(2)}, tmp_path / "s.pt")
    assert safe_torch_load(tmp_path / "s.pt")["epoch"] == 3
    assert leftovers(tmp_path) == [] and leftovers(tmp_path / "sub" / "dir") == []


def test_written_files_and_folders_get_open_and_mkdirs_permissions(tmp_path: Path) -> None:
    """Temporary files and folders are created private (0o600 / 0o700); what is renamed
    into place must not stay so, or a shared model, index or result is unreadable to others."""
    old = os.umask(0o022)
    try:
        atomic_write_text("x", tmp_path / "new.txt")
        atomic_replace_dir(tmp_path / "folder", lambda d: atomic_write_text("y", d / "f.txt"))
        kept = tmp_path / "kept.txt"
        kept.write_text("old")
        kept.chmod(0o640)
        atomic_write_text("new", kept)
        os.umask(0o077)
        atomic_write_text("z", tmp_path / "private.txt")
    finally:
        os.umask(old)
    mode = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.rglob("*")}
    assert mode["new.txt"] == 0o644 and mode["f.txt"] == 0o644
    assert mode["folder"] == 0o755
    assert mode["kept.txt"] == 0o640  # a replaced file keeps the mode it had
    assert mode["private.txt"] == 0o600  # the umask is respected, not overridden


def test_overwrite_replaces_the_file(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    atomic_write_text("old", path)
    atomic_write_text("new", path)
    assert path.read_text() == "new" and leftovers(tmp_path) == []


class Boom(Exception):
    pass


class Unpicklable:
    def __reduce__(self):
        raise Boom("cannot pickle")


@pytest.mark.parametrize(
    "write",
    [
        lambda p: atomic_write_json({"bad": {1, 2}}, p),  # a set is not JSON
        lambda p: atomic_torch_save({"bad": Unpicklable()}, p),
        lambda p: atomic_write_safetensors({"bad": "not a tensor"}, p),  # type: ignore[dict-item]
    ],
    ids=["json", "torch", "safetensors"],
)
def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path, write) -> None:
    path = tmp_path / "target"
    path.write_text("the old, good content")
    with pytest.raises(Exception):  # noqa: B017 - whatever the writer raised
        write(path)
    assert path.read_text() == "the old, good content"
    assert leftovers(tmp_path) == []


def test_a_full_disk_is_one_error_naming_the_file(tmp_path: Path, monkeypatch) -> None:
    """The adversarial test: a resume on a full disk ended in a 47-line traceback from
    torch.save ("RuntimeError: [enforce fail at inline_container.cc:672] . unexpected pos")."""
    import shutil
    from collections import namedtuple

    from picoalign.fileio import WriteError

    def torch_full(tmp: str) -> None:
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1 vs 2")

    path = tmp_path / "state.pt"
    with pytest.raises(RuntimeError, match="unexpected pos") as plenty:  # space left: a bug
        atomic_write(path, torch_full)
    assert not isinstance(plenty.value, WriteError)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9, 4096))
    with pytest.raises(WriteError, match=r"state.pt: cannot write it \(No space left on dev"):
        atomic_write(path, torch_full)
    swapped = tmp_path / ".last.x1y2.tmp"  # a folder being filled for a swap: named as last/
    swapped.mkdir()
    with pytest.raises(WriteError, match=rf"^{tmp_path / 'last' / 'state.pt'}: cannot write"):
        atomic_write(swapped / "state.pt", torch_full)
    swapped.rmdir()  # (its own writer removes it: atomic_replace_dir)

    def os_full(tmp: str) -> None:
        raise OSError(28, "No space left on device")

    with pytest.raises(WriteError, match=r"state.pt: cannot write it \(No space left on device\)"):
        atomic_write(path, os_full)
    assert leftovers(tmp_path) == []


def test_writer_interrupted_midway_keeps_the_old_file(tmp_path: Path, monkeypatch) -> None:
    """A write that has already produced bytes and then fails (or is interrupted)."""
    path = tmp_path / "t.txt"
    atomic_write_text("old", path)

    def half_write(self: Path, text: str) -> int:
        with open(self, "w") as f:
            f.write(text[:2])
        raise KeyboardInterrupt  # BaseException: the temp file must still be removed

    monkeypatch.setattr(Path, "write_text", half_write)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text("new content", path)
    monkeypatch.undo()
    assert path.read_text() == "old"
    assert leftovers(tmp_path) == []


def _side_effect(path: str) -> None:  # what a malicious pickle would run
    Path(path).write_text("pwned")


class Payload:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (_side_effect, (self.path,))


class PlainObject:
    def __init__(self) -> None:
        self.value = 1


def test_safe_torch_load_refuses_pickled_code(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    torch.save({"state": Payload(str(marker))}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match=r"evil\.pt: not a readable") as info:
        safe_torch_load(tmp_path / "evil.pt")
    assert isinstance(info.value.__cause__, pickle.UnpicklingError)
    assert not marker.exists()  # nothing was executed


def test_safe_torch_load_refuses_arbitrary_objects_but_reads_plain_data(tmp_path: Path) -> None:
    torch.save(PlainObject(), tmp_path / "obj.pt")
    with pytest.raises(ValueError, match=r"obj\.pt") as info:
        safe_torch_load(tmp_path / "obj.pt")
    assert isinstance(info.value.__cause__, pickle.UnpicklingError)
    assert "not loaded, for safety" in str(info.value)  # not torch's weights_only=False advice
    assert "weights_only" not in str(info.value)
    data = {"t": torch.arange(3), "n": 2, "f": 0.5, "s": "x", "l": [1, {"a": None}]}
    torch.save(data, tmp_path / "ok.pt")
    back = safe_torch_load(tmp_path / "ok.pt")
    assert torch.equal(back.pop("t"), data.pop("t")) and back == data


# ------------------------------------------------------------------ folder swaps


def _write_files(**files: str):
    def write(folder: Path) -> None:
        for name, text in files.items():
            (folder / name).write_text(text)

    return write


def test_atomic_replace_dir_swaps_in_the_new_folder(tmp_path: Path) -> None:
    target = tmp_path / "last"
    atomic_replace_dir(target, _write_files(a="1", b="1"))
    atomic_replace_dir(target, _write_files(a="2"))
    assert sorted(p.name for p in target.iterdir()) == ["a"]
    assert (target / "a").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]  # no .tmp, no .old


def test_failed_folder_write_keeps_the_old_folder(tmp_path: Path) -> None:
    target = tmp_path / "last"
    atomic_replace_dir(target, _write_files(a="old"))

    def crash(folder: Path) -> None:
        (folder / "a").write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_replace_dir(target, crash)
    assert (target / "a").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]


def test_recover_dir_after_a_kill_between_the_two_renames(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "last"
    atomic_replace_dir(target, _write_files(a="old"))
    real, calls = os.replace, []

    def replace_then_die(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # the new folder is about to move into place: "kill -9" here
            raise SystemExit("killed")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace_then_die)
    with pytest.raises(SystemExit):
        atomic_replace_dir(target, _write_files(a="new"))
    monkeypatch.undo()
    assert not target.exists()  # the window a kill can hit: old moved away, new not yet in
    recover_dir(target)
    assert (target / "a").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]


def test_recover_dir_removes_half_written_temporary_folders(tmp_path: Path) -> None:
    target = tmp_path / "last"
    atomic_replace_dir(target, _write_files(a="1"))
    (tmp_path / ".last.abc123.tmp").mkdir()
    (tmp_path / ".last.abc123.tmp" / "a").write_text("half")
    (tmp_path / ".lastly.tmp").mkdir()  # not ours: kept
    recover_dir(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lastly.tmp", "last"]


def test_check_out_folder_refuses_a_file_and_foreign_entries(tmp_path: Path) -> None:
    ours = ("model.safetensors", "config.yaml")
    check_out_folder(tmp_path / "new", ours, "a model does not write", "use another")  # new: ok
    (tmp_path / "model.safetensors").write_text("x")
    (tmp_path / ".model.safetensors.ab12.tmp").write_text("x")  # a killed write's leftover
    check_out_folder(tmp_path, ours, "a model does not write", "use another")  # ours only: ok
    for name in "fedcba":
        (tmp_path / f"{name}.png").write_text("x")
    with pytest.raises(
        ValueError,
        match=r"holds files a model does not write \(a.png, b.png, "
        r"c.png, d.png, e.png and 1 more\); use another",
    ):
        check_out_folder(tmp_path, ours, "a model does not write", "use another")
    check_out_folder(tmp_path, ours, "x", "y", foreign_ok=True)  # a writer deleting nothing
    assert foreign_entries(tmp_path, ours) == [f"{n}.png" for n in "abcdef"]
    assert name_list(["a", "b"]) == "a, b"
    afile = tmp_path / "a.png"
    with pytest.raises(ValueError, match="exists and is not a folder"):
        check_out_folder(afile, ours, "x", "y", foreign_ok=True)


def test_a_path_that_cannot_be_written_is_named_as_given_not_as_a_temp_file(
    tmp_path: Path, monkeypatch
) -> None:
    """The user report: `--sheet notes.png/x.png` gave `[Errno 17] File exists: 'notes.png'`
    and an unwritable folder `No such file or directory: '.x.png.5f8ye0fb.tmp'`."""
    import errno
    import tempfile

    from picoalign.fileio import WriteError, make_dirs

    (tmp_path / "notes.png").write_text("mine")
    blocked = r"notes.png/x.png: cannot create the folder .*notes.png is a file, not a folder"
    with pytest.raises(WriteError, match=blocked):
        atomic_write_text("x", tmp_path / "notes.png" / "x.png")
    assert (tmp_path / "notes.png").read_text() == "mine"
    with pytest.raises(WriteError, match=r"^--out R: cannot create the folder .*a/b"):
        make_dirs(tmp_path / "notes.png" / "a" / "b", "--out R")

    def refused(*args, **kwargs):  # a read-only folder (root may write anywhere: simulated)
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / ".x.json.tmp"))

    monkeypatch.setattr(tempfile, "mkstemp", refused)
    with pytest.raises(WriteError, match=r"x.json: cannot write in .* \(Permission denied\)$"):
        atomic_write_json({}, tmp_path / "x.json")
    assert not (tmp_path / "x.json").exists()


def test_an_unfinished_run_that_is_training_now_is_said_so(tmp_path) -> None:
    """The walkthrough's report: evaluating a run still training said "finish it with ...
    --resume", which the run's lock then refused."""
    from picoalign.checkpoint import model_dir
    from picoalign.fileio import folder_lock

    run = tmp_path / "run"
    (run / "last").mkdir(parents=True)
    (run / "config.yaml").write_text("out: run\n")
    (run / "last" / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="finish it with: picoalign train"):
        model_dir(run)
    busy = pytest.raises(FileNotFoundError, match=r"it is training now .*: wait for it to end")
    with folder_lock(run, "training it"), busy:
        model_dir(run)
