"""picoalign knows its own outputs again by their marks, and nothing else by mistake."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, PngImagePlugin

from picoalign.marks import SHEET_SOFTWARE, is_sheet


def test_a_sheet_is_known_by_its_mark_and_nothing_else_is(tmp_path: Path) -> None:
    mark = PngImagePlugin.PngInfo()
    mark.add_text("Software", SHEET_SOFTWARE)
    Image.new("RGB", (4, 4)).save(tmp_path / "sheet.png", pnginfo=mark)
    other = PngImagePlugin.PngInfo()
    other.add_text("Software", "GIMP")
    Image.new("RGB", (4, 4)).save(tmp_path / "photo.png", pnginfo=other)
    (tmp_path / "notes.png").write_text("not an image")
    assert is_sheet(tmp_path / "sheet.png")
    assert not is_sheet(tmp_path / "photo.png")
    assert not is_sheet(tmp_path / "notes.png") and not is_sheet(tmp_path / "missing.png")
