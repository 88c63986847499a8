"""Atomic, code-free persistence: a killed run never leaves a half-written file.

Everything is written to a temporary file in the target's folder and moved into place with
``os.replace`` (atomic on POSIX). Weights use safetensors; the training state (optimizer
moments, epoch, RNG) uses ``torch.save`` and is read back with ``weights_only=True`` — neither
path can execute code from a checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read it is to set it and put it back
    os.umask(mask)
    return mask


def new_file_mode(path: Path) -> int:
    """The permissions a file written at ``path`` gets: those of the file it replaces, else
    what ``open()`` would give (0o666 less the umask). Why: temporary files are created
    private (0o600), and a model or index renamed into place with that mode could not be
    read by the colleague or the server that ``open()``'s defaults would have let in."""
    try:
        return os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        return 0o666 & ~_umask()


class WriteError(OSError):
    """A file or folder picoalign was asked to write cannot be written there; the message
    names what the user gave, not a temporary file, and says why."""


def make_dirs(folder: Path, what: str | None = None) -> None:
    """``mkdir -p folder``, with an error that names ``what`` (the user's path or flag)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise WriteError(
            f"{what or folder}: cannot create the folder {folder}: {_blocking(folder)} is a "
            "file, not a folder"
        ) from None
    except OSError as e:
        raise WriteError(
            f"{what or folder}: cannot create the folder {folder} ({e.strerror})"
        ) from None


def _blocking(folder: Path) -> Path:
    """The first existing non-folder on the way to ``folder`` (what makes mkdir fail)."""
    for part in (*reversed(folder.parents), folder):
        if part.exists() and not part.is_dir():
            return part
    return folder


class FolderInUseError(ValueError):
    """Another process is writing the same output folder."""


@contextmanager
def folder_lock(
    out: Path, doing: str, error: type[ValueError] = FolderInUseError
) -> Iterator[None]:
    """Hold the output folder ``out`` for one writer: an OS file lock (``filelock``) on
    ``.NAME.picoalign-lock`` beside it (not in it: ``--overwrite`` moves the folder aside).
    A second writer gets ``error`` naming what the first is ``doing``. A killed process frees
    the lock (its empty file stays, holding nothing); a process that ends removes the file."""
    from filelock import FileLock, Timeout

    make_dirs(out.parent, f"--out {out}")
    path = lock_path(out)
    try:  # a folder that cannot be written is that, not a lock held by someone else
        path.touch()
    except OSError as e:
        raise WriteError(f"--out {out}: cannot write in {out.parent} ({e.strerror})") from None
    lock = FileLock(path, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise error(
            f"--out {out}: another picoalign process is {doing} (it holds {path}); wait for it "
            "to end, or stop it, and try again"
        ) from None
    try:
        yield
    finally:  # removed while still held: a process that opens it later makes a new one
        path.unlink(missing_ok=True)
        lock.release()


def lock_path(out: Path) -> Path:
    """The file :func:`folder_lock` locks for ``out``: beside it, not in it, and beside the
    folder a link points to (``--out link`` and ``--out target`` took two locks, and two
    processes trained into one folder)."""
    real = out.expanduser().resolve()
    return real.parent / f".{real.name}.picoalign-lock"


def folder_busy(out: Path) -> bool:
    """Whether another process holds ``out``'s :func:`folder_lock` now (a run training)."""
    from filelock import FileLock, Timeout

    path = lock_path(out)
    if not path.is_file():
        return False
    lock = FileLock(path, timeout=0)
    try:
        lock.acquire()
    except (Timeout, OSError):
        return True
    lock.release()
    return False


def make_temp_dir(target: Path) -> Path:
    """A fresh hidden folder beside ``target`` to fill and then swap in, with the
    permissions ``mkdir`` would give (``mkdtemp`` makes it private, 0o700)."""
    make_dirs(target.parent, str(target))
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    except OSError as e:
        raise WriteError(f"{target}: cannot write in {target.parent} ({e.strerror})") from None
    tmp.chmod(0o777 & ~_umask())
    return tmp


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """``write(tmp)`` to a temporary file beside ``path``, fsync it, then rename it over
    ``path``: the one way picoalign writes a file. The fsync makes the rename durable as well
    as atomic (after a power cut the file is the old one or the whole new one); on any error
    the temporary file is removed and ``path`` is untouched."""
    atomic_write_files([(Path(path), write)])


def atomic_write_files(files: list[tuple[Path, Callable[[str], None]]]) -> None:
    """:func:`atomic_write` for files that belong together (a model's weights and config):
    every one is written and fsynced beside its path first, and only then are they renamed
    into place, one after the other. An error or a Ctrl-C while writing (the slow part)
    leaves every old file as it was; only the renames, microseconds, are not one step."""
    staged: list[tuple[str, Path]] = []
    try:
        for path, write in files:
            staged.append((_staged(path, write), path))
        for tmp, path in staged:
            try:
                os.replace(tmp, path)
            except OSError as e:  # a folder in its place, a file system gone read-only
                raise WriteError(f"{_as_user_sees(path)}: cannot write it ({e.strerror})") from e
    except BaseException:
        for tmp, _ in staged:
            if os.path.exists(tmp):
                os.unlink(tmp)
        raise


def _staged(path: Path, write: Callable[[str], None]) -> str:
    """``write(tmp)`` to a fsynced temporary file beside ``path``, with the mode ``path``
    would get; its name. On an error it is removed and the error names ``path``."""
    make_dirs(path.parent, str(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise WriteError(f"{path}: cannot write in {path.parent} ({e.strerror})") from None
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, new_file_mode(path))
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        why = _write_failure(e, path.parent)
        if why is not None:  # one line naming the file, not a writer library's traceback
            raise WriteError(f"{_as_user_sees(path)}: cannot write it ({why})") from e
        raise
    return tmp


def _as_user_sees(path: Path) -> Path:
    """``path`` with a folder being filled for a swap (``.last.x1y2.tmp``) named as the
    folder it becomes (``last``): the temporary name means nothing to the user."""
    parts = [re.sub(r"^\.(.+)\.[^.]+\.tmp$", r"\1", p) for p in path.parts]
    return Path(*parts)


# below this much free space, a writer library's odd error is the disk being full
_DISK_FULL_BYTES = 16 * 2**20


def _write_failure(e: BaseException, folder: Path) -> str | None:
    """Why writing failed, in words, when ``e`` is the file system's doing; None otherwise.
    torch.save reports a full disk as ``RuntimeError: ... unexpected pos``, safetensors as its
    own error type: both are read as a full disk when the folder has (almost) no space left."""
    if isinstance(e, WriteError) or not isinstance(e, Exception):
        return None
    if isinstance(e, OSError):
        return e.strerror or str(e)
    try:
        full = shutil.disk_usage(folder).free < _DISK_FULL_BYTES
    except OSError:
        full = False
    if full or "No space left" in str(e):
        return "No space left on device"
    return None


def atomic_write_safetensors(
    tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None
) -> None:
    data = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(data, tmp, metadata=metadata))


def atomic_write_json(obj: Any, path: Path) -> None:
    def write(tmp: str) -> None:
        Path(tmp).write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")

    atomic_write(path, write)


def atomic_write_text(text: str, path: Path) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def atomic_torch_save(obj: Any, path: Path) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def safe_torch_load(path: Path) -> Any:
    """``torch.load`` restricted to tensors and plain containers (no pickled code).

    A damaged or foreign file raises ``ValueError`` naming it (``FileNotFoundError`` stays).
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except Exception as e:  # zip/pickle errors (RuntimeError, UnpicklingError, EOFError ...)
        first = first_line(e)
        if "weights only load failed" in first.lower():  # not torch's advice to load unsafely
            first = "it holds objects picoalign never writes, and is not loaded, for safety"
        raise ValueError(f"{path}: not a readable picoalign training state ({first})") from e


def swap_in_dir(
    tmp: Path, target: Path, *, restore_on: type[BaseException] = BaseException
) -> None:
    """Rename the finished folder ``tmp`` to ``target``, replacing a folder there: the old
    one is moved aside (``.NAME.old``) first, put back if the second rename fails with
    ``restore_on``, then deleted. Otherwise it stays for :func:`recover_dir`."""
    old = target.with_name(f".{target.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        os.replace(target, old)
    try:
        os.replace(tmp, target)
    except restore_on:
        if old.exists() and not target.exists():
            os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def atomic_replace_dir(target: Path, write: Callable[[Path], None]) -> None:
    """Fill a fresh sibling folder with ``write(folder)``, then swap it in for ``target``.

    Why a folder swap: a checkpoint is several files (weights, config, optimiser state) that
    must belong to the same step. A reader — or a resume after ``kill -9`` — sees the old
    folder or the new one, never a mix. If the process dies between the two renames, the old
    folder is left as ``.NAME.old`` and :func:`recover_dir` puts it back.
    """
    tmp = make_temp_dir(target)
    try:
        write(tmp)
        # an exit (a kill, SystemExit) between the renames leaves .NAME.old for recover_dir,
        # which resume runs; an ordinary error puts the old folder back at once
        swap_in_dir(tmp, target, restore_on=Exception)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def recover_dir(target: Path) -> None:
    """Repair what a killed :func:`atomic_replace_dir` left: put the old folder back if the
    process died between the two renames, and delete half-written temporary folders."""
    old = target.with_name(f".{target.name}.old")
    if not target.exists() and old.is_dir():
        os.replace(old, target)
    for stale in target.parent.glob(f".{target.name}.*.tmp"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)


def foreign_entries(folder: Path, ours: tuple[str, ...]) -> list[str]:
    """The entries of ``folder`` whose names are not in ``ours`` (what a writer of such a
    folder puts there): a user's own files, which no replace of the folder may take along.
    Hidden ``.tmp`` / ``.old`` entries are the leftovers of a killed atomic write, not theirs."""
    if not folder.is_dir():
        return []
    return sorted(
        p.name
        for p in folder.iterdir()
        if p.name not in ours and not (p.name.startswith(".") and p.name.endswith((".tmp", ".old")))
    )


def check_out_folder(
    out: Path, ours: tuple[str, ...], holder: str, advice: str, *, foreign_ok: bool = False
) -> None:
    """Refuse an ``--out`` that is a file, or a folder holding entries not in ``ours``.

    Every writer of a whole folder (a training run, a gallery index, the demo) replaces or
    fills it as a unit, so a user's own file in it would be mixed in or deleted; the message
    names the first such files. ``holder`` completes "holds files …" (``"the demo does not
    write"``), ``advice`` says what to do instead; ``foreign_ok`` skips the second rule for a
    writer that deletes nothing (``train --resume``).
    """
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a folder")
    foreign = [] if foreign_ok else foreign_entries(out, ours)
    if foreign:
        raise ValueError(f"--out {out}: holds files {holder} ({name_list(foreign)}); {advice}")


def first_line(e: BaseException) -> str:
    """An exception's message in the one line a command prints (its type if it has none):
    torch and PyYAML messages run over several lines of advice."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def name_list(names: list[str], most: int = 5) -> str:
    """``a, b, c and 4 more``: the first ``most`` names of a refusal message."""
    more = f" and {len(names) - most} more" if len(names) > most else ""
    return ", ".join(names[:most]) + more


def remove_stale_temps(folder: Path) -> None:
    """Delete the temporary files a killed writer left in ``folder`` (``.NAME.XXXX.tmp``,
    the pattern of every atomic write here); the files they were replacing are intact."""
    for stale in folder.glob(".*.*.tmp"):
        if stale.is_file():
            stale.unlink(missing_ok=True)
