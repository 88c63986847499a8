"""Run folders are never destroyed by accident.

Training into a folder that already holds a run (``config.yaml``, ``last/``, ``best/`` or
metrics) is refused unless the caller asks to continue it (``resume``) or to replace it
(``overwrite``); a folder holding anything a run does not write is refused outright. Why not
just overwrite: a forgotten ``--out`` used to replace ``best/`` and the metrics of a run that
took hours, with no way back.

``overwrite`` replaces only once the new run really writes: :class:`Replacement` moves the old
folder aside (one atomic rename) when the new run starts writing, deletes it after the new
run's first checkpoint, and puts it back if the new run stops before that (an error, Ctrl-C).
A ``kill -9`` in between leaves the old run in the aside folder, named when it was moved.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from picoalign.fileio import check_out_folder, folder_lock, foreign_entries, name_list
from picoalign.marks import json_dict

RUN_MARKERS = ("config.yaml", "last", "best", "metrics.jsonl", "metrics.csv")
# everything else a run writes (the CLI's plot included); with the markers, the whole of a run
RUN_FILES = (*RUN_MARKERS, "data.json", "numerics.json", "training.png")


class RunExistsError(ValueError):
    """The output folder holds a run and neither resume nor overwrite was asked for."""


class RunInUseError(ValueError):
    """Another process is training into the same run folder."""


@contextmanager
def run_lock(out: Path) -> Iterator[None]:
    """Hold the run folder ``out`` for one writer (:func:`picoalign.fileio.folder_lock`).
    Why: a ``--resume`` started while the run was still training trained alongside it, both
    writing ``last/``, until one died on the other's folder swap. It is taken before the
    folder's checks, so a run that finished in between is seen as the run it is."""
    with folder_lock(out, "training into it", RunInUseError):
        yield


# what a run writes into its two model folders
CHECKPOINT_FILES = {"best": ("config.json", "model.safetensors"),
                    "last": ("config.json", "model.safetensors", "state.pt")}  # fmt: skip


def run_markers(out: Path) -> list[str]:
    """The entries of ``out`` that make it a run folder (empty: not a run): a ``config.yaml``
    that a run wrote (:func:`_written_by_a_run`), ``last/`` or ``best/`` holding a model, and
    with either, the metrics. A user's own ``config.yaml`` or ``metrics.csv`` alone made a
    folder "a run", and ``--overwrite`` then deleted it."""
    found = [
        name
        for name in CHECKPOINT_FILES
        if any((out / name / f).is_file() for f in CHECKPOINT_FILES[name])
    ]
    if _written_by_a_run(out / "config.yaml", out):
        found.insert(0, "config.yaml")
    if found:
        found += [m for m in ("metrics.jsonl", "metrics.csv") if (out / m).exists()]
    return found


def _written_by_a_run(path: Path, out: Path) -> bool:
    """Whether ``path`` is a run's own ``config.yaml``: every TrainConfig key, and ``out``
    this very folder (a config a user keeps beside a run lists a few keys)."""
    import yaml

    from picoalign.config import TrainConfig

    try:
        saved = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    if not isinstance(saved, dict) or not isinstance(saved.get("out"), str):
        return False
    keys = {f.name for f in dataclasses.fields(TrainConfig)}
    return keys <= saved.keys() and Path(saved["out"]).expanduser().resolve() == out.resolve()


def _not_a_runs(out: Path, found: list[str]) -> list[str]:
    """Entries with a run's names where ``out`` holds no run (a user's own config.yaml)."""
    return [] if found else [n for n in RUN_FILES if (out / n).exists()]


def _users_files_inside(out: Path) -> list[str]:
    """A user's own files inside ``best/`` and ``last/``, which a resume or an overwrite
    replaces whole. Hidden files (a Finder's .DS_Store, NFS's .nfs…) are the system's."""
    return [
        f"{name}/{entry}"
        for name, ours in CHECKPOINT_FILES.items()
        for entry in foreign_entries(out / name, ours)
        if not entry.startswith(".")
    ]


def check_run_folder(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse to train into an existing run unless ``resume`` or ``overwrite``, and into a
    folder that holds anything else at all (:func:`~picoalign.fileio.foreign_entries`).

    Why the second rule: ``--out`` pointed at a data or project folder would mix a run into
    it, and a later ``--overwrite`` of that run (which moves the whole folder aside and then
    deletes it) would take the user's own files with it.
    """
    if resume and overwrite:
        raise ValueError("--resume and --overwrite exclude each other: continue or replace")
    check_out_folder(
        out,
        RUN_FILES,
        "a training run does not write",
        "train into a new or empty folder"
        + (" (--overwrite replaces a run, never other files)" if overwrite else ""),
        foreign_ok=resume,
    )
    _warn_of_a_run_left_aside(out)
    found = run_markers(out)
    lookalike = _not_a_runs(out, found)
    if lookalike:
        raise ValueError(
            f"--out {out}: holds files a training run does not write ({name_list(lookalike)}; "
            "their names are a run's, but no run of this picoalign is there): train into a "
            "new or empty folder"
        )
    inside = _users_files_inside(out)
    if inside:
        raise ValueError(
            f"--out {out}: holds files of yours inside the run ({name_list(inside)}), which a "
            f"{'resume' if resume else 'new run'} would delete with the folder it replaces: "
            "move them out of the run, then run this again"
        )
    if found == ["config.yaml"] and not (resume or overwrite):  # killed before a checkpoint
        raise RunExistsError(
            f"--out {out}: holds a run stopped before its first checkpoint (config.yaml, no "
            "last/): nothing to resume; start it again with --overwrite"
        )
    if found and not (resume or overwrite):
        raise RunExistsError(
            f"--out {out}: already holds a run ({', '.join(found)}); continue it with --resume "
            "or replace it with --overwrite"
        )


def _warn_of_a_run_left_aside(out: Path) -> None:
    """A run an ``--overwrite`` moved aside stays there only if that process was killed
    (``kill -9``) before the new run's first checkpoint: say where, as no other message does."""
    aside = sorted(out.parent.glob(f".{out.name}.replaced-*"))
    if aside:
        warnings.warn(
            f"{aside[-1]} holds the run that was in {out} before an --overwrite killed before "
            f"its first checkpoint; nothing puts it back: put it in {out}'s place (after "
            f"moving away what is there now), or delete it",
            stacklevel=3,
        )


class Replacement:
    """Moves an existing run out of the way when the new run starts writing (see module doc).

    ``begin()`` before the first write, ``commit()`` after each checkpoint (the first one
    deletes the old run), ``abort()`` when training stops before any checkpoint.
    """

    def __init__(self, out: Path) -> None:
        self.out = out
        self.aside: Path | None = None
        self.fresh = False  # no run was there: what this run writes goes if it stops early
        self.created = False  # nor the folder: it goes too, if nothing else is in it

    def begin(self) -> None:
        found = run_markers(self.out)
        foreign = [
            *foreign_entries(self.out, RUN_FILES),
            *_not_a_runs(self.out, found),
            *_users_files_inside(self.out),
        ]
        if foreign:  # check_run_folder refused these; a file that appeared since is kept
            raise ValueError(
                f"--out {self.out}: holds files a training run does not write "
                f"({name_list(foreign)}): not replaced"
            )
        if not found:
            self.fresh = True
            self.created = not self.out.exists()
            return
        stamp = time.strftime("%Y%m%d-%H%M%S")
        aside = self.out.with_name(f".{self.out.name}.replaced-{stamp}-{os.getpid()}")
        os.replace(self.out, aside)
        self.aside = aside
        print(
            f"picoalign: replacing the run in {self.out} (the old one is kept in "
            f"{aside} until the new run's first checkpoint)",
            file=sys.stderr,
        )

    def commit(self) -> None:
        self.fresh = False  # a checkpoint: the run is the user's now, whatever happens next
        if self.aside is not None:
            shutil.rmtree(self.aside, ignore_errors=True)
            self.aside = None

    def abort(self) -> None:
        """Undo a run that stopped before writing any checkpoint: put the old run back, or,
        where there was none, remove what the new one wrote (its config.yaml alone would
        make the folder refuse both a re-run and ``--resume``)."""
        if self.fresh:
            self.fresh = False
            for name in RUN_FILES:
                path = self.out / name
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                elif path.exists():
                    path.unlink()
            if self.created:
                with contextlib.suppress(OSError):  # anything else in it stays, and so does it
                    self.out.rmdir()
            return
        if self.aside is None:
            return
        if self.out.exists():
            shutil.rmtree(self.out)
        os.replace(self.aside, self.out)
        self.aside = None


def data_record(run: Path) -> dict[str, Any]:
    """A run's ``data.json`` (what it trained on); ``{}`` when it has none or it cannot be
    read (a run from before it was written: nothing to compare)."""
    return json_dict(run / "data.json") or {}


def data_change(record: dict[str, Any], meta: dict[str, Any]) -> tuple[str, Any, Any] | None:
    """How the data of features ``meta`` differs from a run's ``record``: ``("items", before,
    now)`` when its items (keys, splits, captions) differ, ``("files", before, now)`` when only
    the image files' sizes or times do, None when neither is known to differ. The one
    comparison ``--resume`` (which refuses other items) and ``evaluate``/``index`` (which
    warn) make. The files are compared only where both read the files alike: a run from
    before the inode was part of a file's identity (no ``file_identity``) would otherwise
    be told, once, that every file changed."""
    for kind, key in (("items", "items_fingerprint"), ("files", "fingerprint")):
        if kind == "files" and record.get("file_identity") != meta.get("file_identity"):
            continue
        before, now = record.get(key), meta.get(key)
        if before is not None and now is not None and before != now:
            return kind, before, now
    return None
