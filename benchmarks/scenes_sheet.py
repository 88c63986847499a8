"""docs/img/scenes.png: a few ``scenes`` families (each scene with its siblings, Twemoji, and
the first one again in Noto) with two of their captions under each picture.

    python benchmarks/scenes_sheet.py --overwrite     # redraw docs/img/scenes.png
    python benchmarks/scenes_sheet.py --out /tmp/sheet.png --families 5
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from _common import add_out_arguments, refuse_to_overwrite
from picoalign.data import load_dataset
from picoalign.fileio import atomic_write

ROOT = Path(__file__).resolve().parent.parent
THUMB, TEXT_H, PAD = 176, 124, 8


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    add_out_arguments(ap, ROOT / "docs" / "img" / "scenes.png", "the contact sheet (PNG)")
    ap.add_argument("--families", type=int, default=3)
    ap.add_argument("--size", type=int, default=140)
    args = ap.parse_args(argv)
    refuse_to_overwrite([args.out], args.overwrite)
    tw = load_dataset(f"scenes:twemoji:size={args.size}").split("test")
    noto = load_dataset(f"scenes:noto:size={args.size}").split("test")
    noto_by_id = {it.key.rsplit(":", 1)[1]: it for it in noto.items}
    groups = [g for g in dict.fromkeys(it.group for it in tw.items)]
    # prefer families of three: they show both an arrangement and a count sibling
    groups.sort(key=lambda g: -sum(it.group == g for it in tw.items))
    rows = []
    for g in groups[: args.families]:
        fam = [it for it in tw.items if it.group == g]
        cells = [(tw.load(it), "Twemoji", it) for it in fam]
        first = noto_by_id[fam[0].key.rsplit(":", 1)[1]]
        cells.append((noto.load(first), "Noto (same scene)", first))
        rows.append(cells)
    cols = max(len(r) for r in rows)
    width, height = cols * (THUMB + PAD) + PAD, len(rows) * (THUMB + TEXT_H + PAD) + PAD
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=11)
    for r, cells in enumerate(rows):
        y = PAD + r * (THUMB + TEXT_H + PAD)
        for c, (im, style, item) in enumerate(cells):
            x = PAD + c * (THUMB + PAD)
            sheet.paste(im.resize((THUMB, THUMB), Image.Resampling.LANCZOS), (x, y))
            lines = [f"[{style}] {item.key.rsplit(':', 1)[1]}"]
            for cap in item.captions[:3]:
                lines += textwrap.wrap("- " + cap, 31)
            draw.multiline_text((x, y + THUMB + 3), "\n".join(lines[:9]), fill="black", font=font)
    atomic_write(args.out, lambda tmp: sheet.save(tmp, format="PNG", optimize=True))
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
