"""``picoalign cache``: listing and clearing only what the feature cache wrote."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch

from cli_runner import run_cli
from picoalign.features.cache import cache_entries, older_than
from picoalign.features.store import atomic_save


def _entry(root: Path, name: str, kind: str = "images", count: int = 3) -> Path:
    path = root / "features" / f"{name}-0123abcd-{kind}-89ef.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": "picoalign-features", "dataset": name, "encoder": "random-conv",
            "count": str(count)}  # fmt: skip
    atomic_save({"tokens": torch.zeros(count, 2, 4), "mask": torch.ones(count, 2)}, meta, path)
    return path


def test_the_cache_lists_and_clears_only_its_own_files(tmp_path: Path) -> None:
    old = _entry(tmp_path, "old")
    new = _entry(tmp_path, "new", "texts", 5)
    week_ago = time.time() - 8 * 86400
    os.utime(old, (week_ago, week_ago))
    parts = tmp_path / "features" / "cut-0123abcd-images-89ef.parts"
    parts.mkdir()
    (parts / "000000000-000000064.safetensors").write_bytes(b"x" * 10)
    mine = tmp_path / "features" / "my-notes-0-images-1.safetensors"  # the name, not the mark
    mine.write_bytes(b"not a feature file")
    (tmp_path / "features" / "README").write_text("mine")

    entries = cache_entries(tmp_path)
    assert [e.dataset for e in entries] == ["cut", "new", "old"]  # newest first
    assert [e.count for e in entries] == [None, 5, 3] and entries[0].unfinished
    assert [e.dataset for e in older_than(entries, 7)] == ["old"]

    rc, out, err = run_cli("cache", "--dir", str(tmp_path))
    assert rc == 0, err
    assert out.startswith(f"feature cache {tmp_path}: 3 files")
    assert "unfinished" in out and "random-conv" in out
    rc, out, _ = run_cli("cache", "--dir", str(tmp_path), "--clear", "--older-than", "7")
    assert rc == 0 and out.startswith("removed 1 cached feature file (") and "2 kept" in out
    assert not old.exists() and new.exists()
    rc, out, _ = run_cli("cache", "--dir", str(tmp_path), "--clear")
    assert rc == 0 and out.startswith("removed 2 cached feature files")
    assert sorted(p.name for p in (tmp_path / "features").iterdir()) == [
        "README",
        mine.name,
    ]  # what the cache did not write stays


@pytest.mark.parametrize(
    ("argv", "why"),
    [(["--older-than", "3"], "give --clear too"), (["--clear", "--older-than", "-1"], ">= 0")],
)
def test_cache_flags_that_contradict_are_one_line(tmp_path: Path, argv, why) -> None:
    rc, _, err = run_cli("cache", "--dir", str(tmp_path), *argv)
    assert rc != 0 and why in err


def test_a_chunk_folder_loses_only_its_chunks_and_a_wrong_dir_is_said(tmp_path: Path) -> None:
    """The walkthrough's reports: --clear removed a whole folder named like a chunk folder,
    a file of the user's in it too; --dir at a folder that is not there listed "0 files"."""
    parts = tmp_path / "features" / "gal-abc-images-def.parts"
    parts.mkdir(parents=True)
    (parts / "000000000-000000064.safetensors").write_bytes(b"x" * 10)
    (parts / "notes.txt").write_text("mine")
    rc, out, _ = run_cli("cache", "--dir", str(tmp_path), "--clear")
    assert rc == 0 and "removed 1 cached feature file (10 B)" in out
    assert sorted(p.name for p in parts.iterdir()) == ["notes.txt"]
    rc, _, err = run_cli("cache", "--dir", str(tmp_path / "nowhere"))
    assert rc != 0 and "no such folder" in err
    (tmp_path / "data.jsonl").write_text("{}\n")  # the CLI walkthrough: "no such folder"
    rc, _, err = run_cli("cache", "--dir", str(tmp_path / "data.jsonl"))
    assert rc != 0 and "data.jsonl: a file, not a folder" in err
    rc, _, err = run_cli("cache", "--dir", str(tmp_path / "features"))
    assert rc != 0 and "the one that holds features/" in err
