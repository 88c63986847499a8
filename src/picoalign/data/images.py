"""Safe image loading: every image in picoalign enters through :func:`load_image`.

Datasets come from users, scrapes and system packages, so a loader meets every oddity that
files have: CMYK JPEGs, 16-bit greyscale PNGs, palettes with a transparent index, alpha
channels, zero-byte or truncated downloads, and "decompression bombs" whose header claims a
gigantic size. One function turns all of them into a plain RGB image or a :class:`DataError`
whose message names the file (and the dataset line that referenced it), so that one bad file
in 100k reports where it is instead of crashing a training run with a bare PIL traceback.

Size: the limit is Pillow's own (``Image.MAX_IMAGE_PIXELS``; like Pillow, images above twice
it are refused as decompression bombs, read from the header before any pixel is decoded), or
``max_pixels`` (``--max-image-pixels``). Legitimate large images (168 MP clip art, 48 MP
photos) are decoded *downscaled* to a longer side of at least :data:`DECODE_SIDE`: the
encoders look at 224 x 224, so full-resolution RGB would cost gigabytes for nothing. JPEG
decodes at 1/2..1/8 scale directly (``Image.draft``); other formats decode at full size in
their own compact mode (1-bit, palette) and are box-reduced band by band.

Transparent pixels are composited onto white (not black): icons, emoji and stamps are drawn
for a light background, and black would turn a black outline into an invisible one.
"""

from __future__ import annotations

import contextlib
import re
import sys
import warnings
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from picoalign.data.base import DataError, Item

# Longer side large images are decoded down to (at least; integer reduction factors): 4x the
# encoders' 224 input, so downscaling to 224 afterwards is unchanged for practical purposes.
DECODE_SIDE = 1024
# How images are decoded, for the feature cache: features made by another decoding are stale.
DECODING = f"reduce>={DECODE_SIDE}"
BAND_ROWS = 1024  # rows converted to RGB at once when reducing a large non-JPEG image
SVG_SIZE = 512  # longer side of a rasterised SVG: their declared sizes are often ~70 px
WHITE = (255, 255, 255)


# We check the pixel count ourselves from the header (``pixel_limit``); Pillow's warning for
# images between 1x and 2x its limit would only repeat that check as noise.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def pixel_limit(max_pixels: int | None = None) -> int:
    """The most pixels an image may have: ``max_pixels``, else Pillow's bomb threshold
    (twice ``Image.MAX_IMAGE_PIXELS``, read now so a program that changed it is obeyed)."""
    if max_pixels is not None:
        if max_pixels < 1:
            raise ValueError(f"max image pixels must be positive, got {max_pixels}")
        return max_pixels
    pil = Image.MAX_IMAGE_PIXELS
    return 2 * pil if pil else sys.maxsize


def allow_pixels(max_pixels: int | None) -> None:
    """Make Pillow accept images up to ``max_pixels`` (``--max-image-pixels`` above Pillow's
    own bomb threshold); our header check then applies the user's limit instead."""
    if (
        max_pixels is not None
        and Image.MAX_IMAGE_PIXELS
        and max_pixels > 2 * Image.MAX_IMAGE_PIXELS
    ):
        Image.MAX_IMAGE_PIXELS = (max_pixels + 1) // 2


def _label(path: Path, where: str | None) -> str:
    return f"{where}: image {path}" if where else f"image {path}"


def load_image(
    path: Path | str,
    *,
    where: str | None = None,
    max_pixels: int | None = None,
    svg_size: int = SVG_SIZE,
    decode_side: int | None = DECODE_SIDE,
) -> Image.Image:
    """Load ``path`` as an RGB image, or raise :class:`DataError` naming the file and ``where``.

    The size bound (:func:`pixel_limit`) is checked from the header *before* pixels are
    decoded, so a 20000x20000 bomb costs a few bytes of reading, not gigabytes. An image whose
    longer side exceeds ``2 * decode_side`` is decoded downscaled by an integer factor to a
    longer side of at least ``decode_side`` (None: full size). EXIF orientation is applied so
    photos appear upright as a person (and a caption writer) saw them. ``.svg`` files are
    rasterised with cairosvg so that their longer side is ``svg_size``.
    """
    path = Path(path)
    label = _label(path, where)
    if path.suffix.lower() == ".svg":
        return _load_svg(path, label, svg_size)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise DataError(f"{label}: file not found") from None
    except OSError as e:
        raise DataError(f"{label}: cannot read file ({e.strerror or e})") from None
    if path.is_dir():  # else Pillow's IsADirectoryError reads as a corrupt image
        raise DataError(f"{label} is a folder, not an image file")
    if size == 0:
        raise DataError(f"{label}: empty file (0 bytes)")
    try:
        with _pillow_errors(label), Image.open(path) as im:
            _check_size(im.size, label, pixel_limit(max_pixels))
            factor = _factor(im.size, decode_side)
            if factor > 1 and im.format == "JPEG":
                w, h = im.size
                im.draft(None, (-(-w // factor), -(-h // factor)))  # 1/2..1/8 scale decode
                factor = _factor(im.size, decode_side)
            im.load()
            return _reduce(_upright(im), factor) if factor > 1 else to_rgb(_upright(im))
    except MemoryError:
        raise DataError(f"{label}: out of memory while decoding the image") from None


@contextlib.contextmanager
def _pillow_errors(label: str) -> Iterator[None]:
    """Whatever Pillow raises on a bad file, as a :class:`DataError` that names it: the one
    translation shared by decoding (:func:`load_image`) and checking (:func:`probe_image`)."""
    try:
        yield
    except FileNotFoundError:  # before OSError: a file gone since it was listed
        raise DataError(f"{label}: file not found") from None
    except DataError as e:
        raise DataError(str(e) if str(e).startswith(label) else f"{label}: {e}") from None
    except Image.DecompressionBombError as e:
        raise DataError(f"{label}: image too large to decode safely ({e})") from None
    except UnidentifiedImageError:
        raise DataError(f"{label}: not an image file in a format Pillow can read") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as e:
        # PIL reports truncation as OSError ("image file is truncated"), broken chunks as
        # SyntaxError/ValueError, and some corrupt headers as struct errors (ValueError).
        raise DataError(f"{label}: truncated or corrupt image ({type(e).__name__}: {e})") from None


def upright_image(im: Image.Image, where: str) -> Image.Image:
    """A caller's PIL image as :func:`load_image` gives its file (decoded, a truncated one a
    :class:`DataError` naming ``where``; upright by its EXIF; RGB): both embed the same."""
    with _pillow_errors(where):
        im.load()
        return to_rgb(_upright(im))


def _upright(im: Image.Image) -> Image.Image:
    """Apply the EXIF orientation; a broken EXIF block is ignored, not fatal (the pixels are
    fine, and cameras write odd EXIF often)."""
    try:
        return ImageOps.exif_transpose(im) or im
    except Exception:
        return im


class FileLoader:
    """The ``load`` of file-backed datasets: ``item.source`` is a path.

    A class rather than a closure so that datasets pickle (DataLoader workers started with
    ``spawn``/``forkserver`` receive the dataset by pickling). ``where_of`` maps item keys to
    the dataset line that named the file; otherwise errors say ``"{label} {key}"``.
    """

    def __init__(
        self,
        label: str = "",
        where_of: dict[str, str] | None = None,
        max_pixels: int | None = None,
    ) -> None:
        self.label = label
        self.where_of = where_of or {}
        self.max_pixels = max_pixels
        self.decode = False  # probe by decoding too (--skip-bad: corrupt pixel data is skipped)

    def where(self, item: Item) -> str:
        return self.where_of.get(item.key) or f"{self.label} {item.key}".strip()

    def __call__(self, item: Item) -> Image.Image:
        return load_image(Path(item.source), where=self.where(item), max_pixels=self.max_pixels)

    def probe(self, item: Item) -> None:
        """Check the item's image header (see :func:`probe_image`)."""
        probe_image(
            Path(item.source), where=self.where(item), max_pixels=self.max_pixels,
            decode=self.decode,
        )  # fmt: skip


def _check_size(size: tuple[int, int], label: str, limit: int) -> None:
    w, h = size
    if w <= 0 or h <= 0:
        raise DataError(f"{label}: invalid image size {w}x{h}")
    if w * h > limit:
        raise DataError(
            f"{label}: image too large ({w}x{h} = {w * h:,} pixels; limit {limit:,}); "
            "downscale it, or raise the limit with --max-image-pixels"
        )


def _factor(size: tuple[int, int], decode_side: int | None) -> int:
    """Integer reduction keeping the longer side >= ``decode_side`` (1 = full size)."""
    return max(1, max(size) // decode_side) if decode_side else 1


def _reduce(im: Image.Image, factor: int) -> Image.Image:
    """RGB of ``im`` box-reduced by ``factor``, converted band by band: a 168 MP palette PNG
    never exists as 500 MB of RGB. Bands are multiples of ``factor`` rows, so the result is
    the same as reducing the whole image at once."""
    if im.mode == "F":  # min-max normalised over the whole image: convert it whole
        return to_rgb(im).reduce(factor)
    w, h = im.size
    out = Image.new("RGB", (-(-w // factor), -(-h // factor)), WHITE)
    step = max(1, BAND_ROWS // factor) * factor
    for top in range(0, h, step):
        band = to_rgb(im.crop((0, top, w, min(h, top + step))))
        out.paste(band.reduce(factor), (0, top // factor))
    return out


def probe_image(
    path: Path | str,
    *,
    where: str | None = None,
    max_pixels: int | None = None,
    decode: bool = False,
) -> None:
    """Check ``path`` without decoding its pixels: readable header, size within the limit,
    and an intact file structure (PNG chunk checksums through ``verify``; a JPEG's end
    marker, else a 1/8-scale decode). Raises :class:`DataError` like :func:`load_image`.

    Why: run over every image before encoding, it reports all bad files at once in seconds,
    instead of the first one after minutes of encoding. A file whose structure is intact but
    whose compressed data is not (a PNG with valid checksums over broken deflate data) passes
    it; ``decode`` also decodes the pixels (a JPEG at 1/8 scale), which catches those too at
    the cost of a decode per image: what ``--skip-bad`` asks for, since it promises to skip
    every image that cannot be read.
    """
    path = Path(path)
    label = _label(path, where)
    if path.suffix.lower() == ".svg":
        if not path.is_file():
            raise DataError(f"{label}: file not found")
        if path.stat().st_size == 0:
            raise DataError(f"{label}: empty file (0 bytes)")
        return
    with _pillow_errors(label):
        if path.stat().st_size == 0:
            raise DataError(f"{label}: empty file (0 bytes)")
        with Image.open(path) as im:
            _check_size(im.size, label, pixel_limit(max_pixels))
            if im.format == "JPEG":
                if not _jpeg_ends(path):
                    im.draft(None, (max(1, im.size[0] // 8), max(1, im.size[1] // 8)))
                    im.load()
            else:
                im.verify()
        if decode:  # verify() leaves the image unusable: open it again to decode it
            with Image.open(path) as im:
                if im.format == "JPEG":
                    im.draft(None, (max(1, im.size[0] // 8), max(1, im.size[1] // 8)))
                im.load()


def _jpeg_ends(path: Path) -> bool:
    """Whether the last KiB holds a JPEG end-of-image marker (a cut download does not)."""
    with open(path, "rb") as f:
        f.seek(max(0, f.seek(0, 2) - 1024))
        return b"\xff\xd9" in f.read()


def to_rgb(im: Image.Image, fill: tuple[int, int, int] = WHITE) -> Image.Image:
    """Convert any PIL mode to RGB; alpha (or a transparent palette index) over ``fill``.

    16-bit and 32-bit integer greyscale are rescaled (PIL's own ``convert`` clips them, which
    turns most 16-bit images white).
    """
    mode = im.mode
    if mode == "RGB" and "transparency" not in im.info:
        return im.copy()
    if mode.startswith("I;16") or mode in ("I", "F"):
        return _high_depth_to_rgb(im)
    has_alpha = mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in im.info
    if has_alpha:
        rgba = im.convert("RGBA")
        out = Image.new("RGB", im.size, fill)
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    try:
        return im.convert("RGB")
    except ValueError as e:  # e.g. LAB, which PIL cannot convert directly
        raise DataError(f"unsupported image mode {mode!r}: {e}") from None


def _high_depth_to_rgb(im: Image.Image) -> Image.Image:
    """Map 16-bit (``I;16*``, and ``I``, which Pillow uses for 16-bit TIFF/PNG) to 8 bits by
    the full 16-bit range; float images (``F``) are min-max normalised."""
    arr = np.asarray(im)
    if im.mode == "F":
        arr = arr.astype(np.float64)
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        scaled = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        grey = np.nan_to_num(scaled).astype(np.uint8)
    else:
        grey = (np.clip(arr.astype(np.int64), 0, 65535) // 257).astype(np.uint8)
    return Image.fromarray(grey, mode="L").convert("RGB")


def to_square(
    img: Image.Image,
    size: int,
    fill: tuple[int, int, int] = WHITE,
    resample: Image.Resampling = Image.Resampling.BICUBIC,
) -> Image.Image:
    """Pad ``img`` to a centred square with ``fill`` and resize it to ``size`` x ``size``.

    Padding instead of centre-cropping keeps every object in view: a caption may mention
    something near the border ("a dog on the left"), and stamps/emoji are not photos.
    """
    img = pad_to_square(to_rgb(img, fill) if img.mode != "RGB" else img, fill)
    if img.size[0] != size:
        img = img.resize((size, size), resample)
    return img


def pad_to_square(img: Image.Image, fill: tuple[int, int, int] = WHITE) -> Image.Image:
    """Centre an RGB ``img`` on a square ``fill`` canvas (unchanged if already square)."""
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    canvas = Image.new("RGB", (side, side), fill)
    canvas.paste(img, ((side - w) // 2, (side - h) // 2))
    return canvas


_LENGTH = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([a-z%]*)\s*$")


def _svg_aspect(width: str | None, height: str | None, viewbox: str | None) -> float | None:
    """Height/width ratio from the root element, or None when it cannot be told."""
    if viewbox:
        parts = re.split(r"[\s,]+", viewbox.strip())
        try:
            vb_w, vb_h = float(parts[2]), float(parts[3])
            if vb_w > 0 and vb_h > 0:
                return vb_h / vb_w
        except (IndexError, ValueError):
            pass
    mw, mh = _LENGTH.match(width or ""), _LENGTH.match(height or "")
    if mw and mh and mw.group(2) == mh.group(2) and mw.group(2) != "%":
        w, h = float(mw.group(1)), float(mh.group(1))
        if w > 0 and h > 0:
            return h / w
    return None


def _load_svg(path: Path, label: str, svg_size: int) -> Image.Image:
    """Rasterise an SVG at a fixed longer side.

    The output size is chosen by us, not by the file: a declared ``width="100000"`` cannot
    make cairo allocate gigabytes, and tiny declared sizes do not give 70-pixel images.
    ``unsafe=True`` lets cairosvg follow the file's own references (embedded images, local
    entities), which Tux Paint stamps use; only files a user chose to load are opened.
    """
    try:
        import cairosvg  # noqa: F401  (import error → install hint)
        from cairosvg.parser import Tree
        from cairosvg.surface import PNGSurface
    except (ImportError, OSError) as e:
        raise DataError(
            f"{label}: SVG needs cairosvg and the cairo library "
            f"(pip install cairosvg; apt-get install libcairo2): {e}"
        ) from None
    if not path.exists():
        raise DataError(f"{label}: file not found")
    if path.stat().st_size == 0:
        raise DataError(f"{label}: empty file (0 bytes)")
    try:
        tree = Tree(url=str(path), unsafe=True)
        aspect = _svg_aspect(tree.get("width"), tree.get("height"), tree.get("viewBox"))
        if aspect is None:
            out_w, out_h = svg_size, svg_size
        elif aspect >= 1:
            out_w, out_h = max(1, round(svg_size / aspect)), svg_size
        else:
            out_w, out_h = svg_size, max(1, round(svg_size * aspect))
        buf = BytesIO()
        surface = PNGSurface(tree, buf, 96, output_width=out_w, output_height=out_h)
        surface.finish()
        with Image.open(BytesIO(buf.getvalue())) as im:
            im.load()
            return to_rgb(im)
    except DataError:
        raise
    except Exception as e:  # cairosvg raises many types (XML, ValueError, cairo.Error, ...)
        raise DataError(f"{label}: cannot rasterise SVG ({type(e).__name__}: {e})") from None
