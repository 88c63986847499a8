"""Safe image loading: every odd mode becomes RGB, every bad file a DataError naming it."""

from __future__ import annotations

import struct
import zlib
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from picoalign.data import DataError, load_image, to_rgb, to_square
from picoalign.data.images import probe_image


def png_with_header_size(path: Path, w: int, h: int) -> Path:
    """A tiny valid-looking PNG whose IHDR claims w x h (CRC fixed), without allocating it."""
    buf = BytesIO()
    Image.new("1", (8, 8)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", w, h)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


def pixel(img: Image.Image, xy: tuple[int, int] = (0, 0)) -> tuple[int, ...]:
    return tuple(img.getpixel(xy))  # type: ignore[arg-type]


def test_rgb_png_roundtrip(tmp_path: Path) -> None:
    p = tmp_path / "red.png"
    Image.new("RGB", (5, 3), (200, 10, 10)).save(p)
    img = load_image(p)
    assert img.mode == "RGB" and img.size == (5, 3) and pixel(img) == (200, 10, 10)


@pytest.mark.parametrize("fmt", ["JPEG", "TIFF"])
def test_cmyk_loads_as_rgb(tmp_path: Path, fmt: str) -> None:
    p = tmp_path / f"cmyk.{fmt.lower()}"
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(p, fmt)  # pure red in CMYK
    img = load_image(p)
    r, g, b = pixel(img)
    assert img.mode == "RGB" and r > 200 and g < 60 and b < 60


def test_16bit_greyscale_is_rescaled_not_clipped(tmp_path: Path) -> None:
    arr = np.full((4, 4), 32768, np.uint16)  # mid-grey in 16 bits; PIL's convert would clip
    p = tmp_path / "grey16.png"
    Image.fromarray(arr).save(p)
    assert Image.open(p).mode.startswith("I")
    img = load_image(p)
    assert img.mode == "RGB" and pixel(img) == (127, 127, 127)


def test_32bit_int_tiff(tmp_path: Path) -> None:
    p = tmp_path / "int.tiff"
    Image.fromarray(np.full((4, 4), 65535, np.int32)).save(p)
    assert pixel(load_image(p)) == (255, 255, 255)


def test_palette_with_transparency_composites_on_white(tmp_path: Path) -> None:
    im = Image.new("P", (4, 4), 0)
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    im.putpixel((1, 1), 1)
    p = tmp_path / "pal.png"
    im.save(p, transparency=0)
    img = load_image(p)
    assert img.mode == "RGB"
    assert pixel(img, (0, 0)) == (255, 255, 255)  # transparent black → white
    assert pixel(img, (1, 1)) == (255, 0, 0)


@pytest.mark.parametrize("mode,value", [("LA", (0, 0)), ("RGBA", (0, 0, 0, 0))])
def test_alpha_composites_on_white(tmp_path: Path, mode: str, value: tuple[int, ...]) -> None:
    im = Image.new(mode, (4, 4), value)
    opaque = (50, 255) if mode == "LA" else (50, 60, 70, 255)
    im.putpixel((2, 2), opaque)
    p = tmp_path / f"{mode}.png"
    im.save(p)
    img = load_image(p)
    assert pixel(img, (0, 0)) == (255, 255, 255)
    assert pixel(img, (2, 2)) == ((50, 50, 50) if mode == "LA" else (50, 60, 70))


@pytest.mark.parametrize("mode", ["L", "1", "I;16", "F", "YCbCr"])
def test_to_rgb_any_mode(mode: str) -> None:
    assert to_rgb(Image.new(mode, (3, 3))).mode == "RGB"


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° on display
    p = tmp_path / "rot.jpg"
    Image.new("RGB", (20, 10)).save(p, exif=exif)
    assert load_image(p).size == (10, 20)


def test_zero_byte_file(tmp_path: Path) -> None:
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    with pytest.raises(DataError, match=r"empty\.png.*empty file"):
        load_image(p, where="data.jsonl line 7")


def test_where_is_in_message(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data\.jsonl line 7: image .*gone\.png: file not found"):
        load_image(tmp_path / "gone.png", where="data.jsonl line 7")


def test_truncated_png(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    buf = BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), np.uint8)).save(buf, "PNG")
    p = tmp_path / "cut.png"
    p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(DataError, match=r"cut\.png.*truncated or corrupt"):
        load_image(p)


def test_not_an_image(tmp_path: Path) -> None:
    p = tmp_path / "fake.png"
    p.write_bytes(b"this is not a PNG at all")
    with pytest.raises(DataError, match=r"fake\.png.*not an image"):
        load_image(p)


@pytest.mark.parametrize(
    "w,h,limit", [(20000, 20000, None), (13000, 10, 100_000), (7000, 7000, 40e6)]
)
def test_huge_header_refused_before_decoding(tmp_path: Path, w: int, h: int, limit) -> None:
    # 20000² (400 MP) trips Pillow's own bomb guard (2 x MAX_IMAGE_PIXELS); the others are
    # refused only by an explicit max_pixels (--max-image-pixels), read from the header.
    p = png_with_header_size(tmp_path / f"big{w}.png", w, h)
    for check in (load_image, probe_image):
        kw = {} if limit is None else {"max_pixels": int(limit)}
        with pytest.raises(DataError, match=rf"big{w}\.png.*too large"):
            check(p, **kw)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("w,h", [(13000, 10), (7000, 7000), (12000, 14000)])
def test_large_header_is_not_too_large_by_default(tmp_path: Path, w: int, h: int) -> None:
    # under Pillow's bomb limit (179 MP): refused only because this fake file has no pixels
    p = png_with_header_size(tmp_path / f"big{w}.png", w, h)
    with pytest.raises(DataError, match=r"truncated or corrupt") as e:
        load_image(p)
    assert "too large" not in str(e.value)


def test_svg_is_rasterised_at_fixed_size(tmp_path: Path) -> None:
    p = tmp_path / "tall.svg"
    p.write_text(
        '<svg xmlns="http://www.w3.org/2000/svg" width="10" height="20">'
        '<rect width="10" height="10" fill="red"/></svg>'
    )
    img = load_image(p, svg_size=64)
    assert img.mode == "RGB" and img.size == (32, 64)
    assert pixel(img, (16, 8))[0] > 200 and pixel(img, (16, 56)) == (255, 255, 255)


def test_svg_declared_huge_is_bounded(tmp_path: Path) -> None:
    p = tmp_path / "huge.svg"
    p.write_text(
        '<svg xmlns="http://www.w3.org/2000/svg" width="100000" height="100000" '
        'viewBox="0 0 4 2"><rect width="4" height="2" fill="blue"/></svg>'
    )
    assert load_image(p).size == (512, 256)


def test_bad_svg(tmp_path: Path) -> None:
    p = tmp_path / "bad.svg"
    p.write_text("<svg this is not xml")
    with pytest.raises(DataError, match=r"bad\.svg.*SVG"):
        load_image(p)


def test_to_square_pads_with_white() -> None:
    img = Image.new("RGB", (30, 10), (0, 0, 0))
    sq = to_square(img, 15)
    assert sq.size == (15, 15)
    assert pixel(sq, (7, 0)) == (255, 255, 255) and pixel(sq, (7, 7)) == (0, 0, 0)
    assert to_square(Image.new("RGBA", (4, 4)), 8).mode == "RGB"
