"""Contact sheets on their own: labels the plot font cannot draw."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from PIL import Image

from picoalign.retrieval.sheet import contact_sheet


@dataclass
class _Hit:
    key: str
    score: float = 0.5


def test_missing_glyphs_make_one_warning(tmp_path) -> None:
    """The walkthrough's report: every missing glyph warned once per layout pass (layout and
    save), so an emoji query printed its warnings twice over. Now: one warning, each
    character once."""
    hits = [[_Hit("a \U0001fae0 face"), _Hit("b")], [_Hit("漢字")]]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = contact_sheet(
            hits,
            lambda hit: Image.new("RGB", (8, 8)),
            tmp_path / "sheet.png",
            title="\U0001fae0 query",
            row_labels=["melting \U0001fae0", "kanji"],
        )
    assert out.exists()
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1, messages
    assert "no glyph for 3 characters" in messages[0]
    assert set(messages[0].split(": ")[-1].split()) == {"\U0001fae0", "漢", "字"}


def test_drawable_labels_warn_nothing(tmp_path) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        contact_sheet(
            [[_Hit("a red circle")]],
            lambda hit: Image.new("RGB", (8, 8)),
            tmp_path / "sheet.png",
            row_labels=["red"],
        )
    assert not caught


def test_a_missing_file_is_said_as_such_on_its_tile() -> None:
    from picoalign.retrieval.sheet import _reason

    assert _reason(FileNotFoundError("x")) == "file missing"
    assert _reason(ValueError("item 'a.png' is no longer in dataset folder:g")) == "file missing"
    assert _reason(OSError("truncated")) == "OSError"


def test_a_sheet_reads_images_under_the_pixel_limit_the_index_was_built_with(tmp_path) -> None:
    """The gallery walkthrough: an image indexed with --max-image-pixels 200M was drawn as
    an "unavailable / DataError" tile, since the sheet read it under the default limit."""
    from picoalign.retrieval.sheet import _reason, dataset_image_loader

    big = tmp_path / "big.png"
    Image.new("1", (400, 300)).save(big)  # 120,000 pixels
    hit = _Hit("big.png")
    hit.source = str(big)
    from picoalign.data.base import DataError
    from picoalign.data.images import pixel_limit

    assert pixel_limit() > 120_000  # the default lets it through; a small index limit:
    strict = dataset_image_loader({"spec": f"folder:{tmp_path}", "max_image_pixels": 100_000})
    try:
        strict(hit)
    except DataError as e:
        assert _reason(e) == "too many pixels", e
    else:
        raise AssertionError("the index's limit was not applied")
    loose = dataset_image_loader({"spec": f"folder:{tmp_path}", "max_image_pixels": 200_000})
    assert loose(hit).size[0] > 0
