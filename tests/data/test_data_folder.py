"""``folder:PATH``: a caption-less gallery of image files."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from picoalign.data import DataError, load_dataset
from picoalign.data.check import prepare_dataset


def _gallery(root: Path) -> Path:
    (root / "sub dir é").mkdir(parents=True)
    (root / ".thumbs").mkdir()
    Image.new("RGB", (9, 9), (200, 0, 0)).save(root / "b.png")
    Image.new("RGB", (9, 9), (0, 200, 0)).save(root / "sub dir é" / "a.JPG")
    Image.new("RGB", (9, 9), (0, 0, 200)).save(root / ".thumbs" / "hidden.png")
    (root / "notes.txt").write_text("not an image")
    (root / ".DS_Store").write_bytes(b"\0")
    return root


def test_every_image_file_is_one_caption_less_test_item(tmp_path: Path) -> None:
    ds = load_dataset(f"folder:{_gallery(tmp_path / 'g')}")
    assert [it.key for it in ds.items] == ["b.png", "sub dir é/a.JPG"]  # sorted, relative
    assert all(it.captions == () and it.split == "test" for it in ds.items)
    assert ds.notes == {"not_images": 1}  # notes.txt; hidden files and folders are not looked at
    assert ds.load(ds.items[1]).getpixel((4, 4))[1] > 150
    assert load_dataset(f"folder:{tmp_path / 'g'}").fingerprint == ds.fingerprint
    Image.new("RGB", (9, 9)).save(tmp_path / "g" / "c.png")
    assert load_dataset(f"folder:{tmp_path / 'g'}").fingerprint != ds.fingerprint


def test_a_folder_with_no_images_or_no_folder_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("x")
    with pytest.raises(DataError, match=r"no image files in it or its sub-folders \(1 other"):
        load_dataset(f"folder:{tmp_path / 'empty'}")
    with pytest.raises(DataError, match="no such folder"):
        load_dataset(f"folder:{tmp_path / 'nope'}")
    with pytest.raises(DataError, match="is a file, not a folder"):
        load_dataset(f"folder:{tmp_path / 'empty' / 'readme.md'}")


def test_training_on_a_gallery_says_what_it_is_for(tmp_path: Path) -> None:
    spec = f"folder:{_gallery(tmp_path / 'g')}"
    assert len(prepare_dataset(spec, need_splits=("all",)).items) == 2  # what index reads
    with pytest.raises(
        DataError, match=r"no captions, all in the test split: it can be indexed .* need captions"
    ):
        prepare_dataset(spec, need_splits=("train", "val"))


def test_links_are_one_item_odd_names_are_problems_and_passed_files_are_said(
    tmp_path: Path,
) -> None:
    """The walkthrough's reports: a symlink and its target were two items (the same picture
    twice in the results); one file name that is not UTF-8 failed the whole index with an
    encoding error naming no file; the count of files passed over was never printed."""
    import os

    root = _gallery(tmp_path / "g")
    os.symlink(root / "b.png", root / "a-link.png")
    notes: list[str] = []
    ds = prepare_dataset(f"folder:{root}", need_splits=("all",), report=notes.append)
    assert [it.key for it in ds.items] == ["b.png", "sub dir é/a.JPG"]  # the real file's key
    said = "2 images; passed over 1 file that is not an image and 1 link to an image already"
    assert any(said in n for n in notes), notes
    bad = os.fsencode(root) + b"/caf\xe9.png"
    Image.new("RGB", (9, 9)).save(bad.decode("utf-8", "surrogateescape"), format="PNG")
    with pytest.raises(DataError, match=r"caf\\xe9\.png: file name is not valid UTF-8"):
        load_dataset(f"folder:{root}")
    ds = load_dataset(f"folder:{root}", skip_bad=True)
    assert len(ds.items) == 2 and "not valid UTF-8" in ds.skipped[0][1]


def test_linked_folders_are_walked_once_and_broken_links_and_non_images_said(
    tmp_path: Path,
) -> None:
    """The gallery walkthrough: a linked sub-folder's 13 images were left out without a word,
    a broken link was counted as "a file that is not an image", and a menu.pdf or a clip.mpg
    (extensions Pillow registers but reads no pixels from) failed the whole index."""
    import os

    root = _gallery(tmp_path / "g")
    outside = tmp_path / "elsewhere"
    (outside / "deeper").mkdir(parents=True)
    Image.new("RGB", (9, 9), (9, 9, 9)).save(outside / "x.png")
    Image.new("RGB", (9, 9), (9, 9, 9)).save(outside / "deeper" / "y.png")
    os.symlink(outside, root / "ext")  # a folder on another disk, linked in
    os.symlink(outside, outside / "deeper" / "loop")  # a link back up: walked once
    os.symlink(root / "sub dir é", root / "again")  # inside the gallery: its own paths win
    os.symlink(root / "nowhere.png", root / "broken.png")
    Image.new("RGB", (9, 9)).save(root / "menu.pdf")
    (root / "clip.mpg").write_bytes(b"\0\0\1\xba" + b"\0" * 100)
    notes: list[str] = []
    ds = prepare_dataset(f"folder:{root}", need_splits=("all",), report=notes.append)
    assert [it.key for it in ds.items] == [
        "b.png",
        "ext/deeper/y.png",
        "ext/x.png",
        "sub dir é/a.JPG",
    ]
    assert any(
        "4 images; passed over 3 files that are not images and 1 broken link" in n for n in notes
    ), notes


def test_picoalign_outputs_kept_in_the_gallery_are_not_pictures_of_it(tmp_path: Path) -> None:
    """The gallery walkthrough: a contact sheet saved into the gallery was indexed as an
    image on the next `index`, and an index folder kept inside it was walked; the re-test:
    a run folder kept there gave its training.png."""
    import json

    from PIL import PngImagePlugin

    from picoalign.marks import INDEX_FORMAT, SHEET_SOFTWARE

    root = _gallery(tmp_path / "g")
    mark = PngImagePlugin.PngInfo()
    mark.add_text("Software", SHEET_SOFTWARE)
    Image.new("RGB", (9, 9)).save(root / "results.png", pnginfo=mark)
    (root / "idx").mkdir()
    (root / "idx" / "manifest.json").write_text(json.dumps({"format": INDEX_FORMAT}))
    Image.new("RGB", (9, 9)).save(root / "idx" / "thumb.png")
    (root / "run" / "best").mkdir(parents=True)  # a training run kept in the gallery
    (root / "run" / "config.yaml").write_text("epochs: 1\n")
    (root / "run" / "best" / "model.safetensors").write_bytes(b"weights")
    Image.new("RGB", (9, 9)).save(root / "run" / "training.png")
    (root / "demo").mkdir()  # a demo's folder: its plot is no picture of the gallery
    (root / "demo" / "demo.json").write_text(json.dumps({"written_by": "picoalign demo"}))
    Image.new("RGB", (9, 9)).save(root / "demo" / "training.png")
    (root / "web").mkdir()  # another program's manifest: its folder is the gallery's
    (root / "web" / "manifest.json").write_text(json.dumps({"name": "app"}))
    Image.new("RGB", (9, 9)).save(root / "web" / "icon.png")
    notes: list[str] = []
    ds = prepare_dataset(f"folder:{root}", need_splits=("all",), report=notes.append)
    assert [it.key for it in ds.items] == ["b.png", "sub dir é/a.JPG", "web/icon.png"]
    said = "passed over 2 files that are not images and 4 picoalign outputs (indexes, runs"
    assert any(said in n for n in notes), notes
    assert any("e.g. demo/)" in n for n in notes), notes  # named: a user's photos put there


def test_a_bad_file_of_a_gallery_is_named_once(tmp_path: Path) -> None:
    """The gallery walkthrough: "g2 misc/corrupt.png: image g2/misc/corrupt.png: not an
    image file …" named the file twice, once split at the folder."""
    root = _gallery(tmp_path / "g")
    (root / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nxxxx")
    with pytest.raises(DataError) as e:
        prepare_dataset(f"folder:{root}", need_splits=("all",), report=lambda _: None)
    assert str(e.value).startswith(f"{root}/bad.png: not an image file"), e.value
