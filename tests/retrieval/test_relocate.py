"""Relocating an index: the pure path and spec rewrites (the command is tested end to end in
tests/cli/test_commands.py)."""

from __future__ import annotations

from picoalign.retrieval.relocate import moved_path, moved_spec, relocate_manifest


def test_moved_path_takes_only_paths_inside_the_old_folder() -> None:
    assert moved_path("/a/photos/x.png", "/a/photos", "/b/pics") == "/b/pics/x.png"
    assert moved_path("/a/photos/2024/x.png", "/a/photos/", "/b/pics") == "/b/pics/2024/x.png"
    assert moved_path("/a/photos", "/a/photos", "/b/pics") == "/b/pics"
    assert moved_path("/a/photos2/x.png", "/a/photos", "/b/pics") is None  # a sibling folder
    assert moved_path("/c/a/photos/x.png", "/a/photos", "/b/pics") is None


def test_moved_spec_moves_path_arguments_and_keeps_options() -> None:
    assert moved_spec("folder:/a/photos", "/a/photos", "/b") == "folder:/b"
    assert moved_spec("jsonl:/a/d/data.jsonl", "/a/d", "/b/d") == "jsonl:/b/d/data.jsonl"
    assert (
        moved_spec("jsonl:/a/d.jsonl:default-split=seeded", "/a", "/n")
        == "jsonl:/n/d.jsonl:default-split=seeded"
    )
    assert moved_spec("karpathy:/a/k.json:/a/im", "/a/im", "/n") == "karpathy:/a/k.json:/n"
    assert moved_spec("twemoji", "/a", "/b") == "twemoji"  # a built-in set has no paths


def test_moved_spec_moves_a_path_with_a_colon_that_is_gone() -> None:
    """The gallery walkthrough: "folder:/p/shots 12:30" parses only while that folder
    exists; after the move it stayed behind, and every contact sheet then failed on it."""
    gone = "/nowhere/shots 12:30"
    assert moved_spec(f"folder:{gone}", gone, "/p/shots2") == "folder:/p/shots2"
    assert (
        moved_spec(f"jsonl:{gone}/d.jsonl:val=strict", gone, "/n") == "jsonl:/n/d.jsonl:val=strict"
    )
    assert moved_spec(f"folder:{gone}", "/elsewhere", "/n") == f"folder:{gone}"  # not under it


def test_relocate_manifest_rewrites_sources_and_spec_only() -> None:
    man = {
        "sources": ["/a/p/x.png", "", "/elsewhere/y.png"],
        "keys": ["x", "r", "y"],
        "dataset": {"spec": "folder:/a/p", "seed": 3},
        "dims": {"n": 3},
    }
    out, moved = relocate_manifest(man, "/a/p", "/b/q")
    assert moved == 1
    assert out["sources"] == ["/b/q/x.png", "", "/elsewhere/y.png"]
    assert out["dataset"] == {"spec": "folder:/b/q", "seed": 3}
    assert out["keys"] == man["keys"] and out["dims"] == man["dims"]
    assert man["sources"][0] == "/a/p/x.png"  # the input is not changed


def test_an_index_from_before_paths_lost_their_dot_dots_is_relocated() -> None:
    """The re-test: an older index stored "/a/sub/../p/x.png"; with OLD given as "/a/p" (as
    the command now stores it) nothing matched, and no spelling of OLD could."""
    man = {
        "sources": ["/a/sub/../p/x.png", "/a/p/./y.png"],
        "dataset": {"spec": "folder:/a/sub/../p"},
    }
    out, moved = relocate_manifest(man, "/a/p", "/b/q")
    assert moved == 2 and out["sources"] == ["/b/q/x.png", "/b/q/y.png"]
    assert out["dataset"]["spec"] == "folder:/b/q"
