"""A gallery grown by a few images: encoding it again in full, against reusing the rows an
earlier cache file holds (``features/reuse.py``), measured side by side in one run.

The gallery is N Twemoji PNGs copied into a temporary folder, encoded once with
EfficientNet-Lite0 into a temporary cache; then ``--add`` more images are copied in and the
grown gallery is encoded twice: with row reuse (what ``picoalign index`` does for a folder)
and without it (every image again). Prints both times, their ratio, how many images each
encoded, and how far the reused features are from the full encode (rounding: a backbone's
bits can depend on the other images in its batch).

    python benchmarks/cache_reuse.py                  # 300 images, 3 added
    python benchmarks/cache_reuse.py --images 1000 --add 10
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from _common import add_out_arguments, machine, refuse_to_overwrite, write_json
from picoalign.data import load_dataset
from picoalign.data.builtin import TWEMOJI_HINT, _twemoji_dir
from picoalign.features.encode import encode_dataset
from picoalign.features.store import read_safetensors

OUT = Path(__file__).parent / "results" / "cache_reuse.json"


def encode(spec: str, cache: Path, reuse: bool) -> tuple[float, object]:
    t0 = time.perf_counter()
    fs = encode_dataset(
        load_dataset(spec), "efficientnet-lite0", "minilm", cache_dir=cache, progress=False,
        texts=False, reuse_rows=reuse,
    )  # fmt: skip
    return time.perf_counter() - t0, fs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=300, help="gallery size before (300)")
    ap.add_argument("--add", type=int, default=3, help="images added to it (3)")
    add_out_arguments(ap, OUT, "the figures as JSON")
    args = ap.parse_args(argv)
    refuse_to_overwrite([args.out], args.overwrite)
    source = _twemoji_dir()
    if source is None:
        sys.exit(f"needs the Twemoji PNGs: {TWEMOJI_HINT}")
    pngs = sorted(source.glob("*.png"))[: args.images + args.add]
    with tempfile.TemporaryDirectory() as tmp:
        gallery, cache, full_cache = Path(tmp, "gallery"), Path(tmp, "cache"), Path(tmp, "c2")
        gallery.mkdir()
        for p in pngs[: args.images]:
            shutil.copy(p, gallery / p.name)
        spec = f"folder:{gallery}"
        first, _ = encode(spec, cache, reuse=True)
        for p in pngs[args.images :]:  # spread through the sorted listing, not appended
            shutil.copy(p, gallery / f"{p.stem}-new.png")
        reused_s, reused = encode(spec, cache, reuse=True)
        _, meta = read_safetensors(Path(reused.meta["image_cache"]))  # what it reused
        full_s, full = encode(spec, full_cache, reuse=False)
    diff = float((reused.images.tokens.float() - full.images.tokens.float()).abs().max())
    result = {
        "machine": machine(),
        "images_before": args.images,
        "images_added": args.add,
        "first_encode_s": round(first, 2),
        "grown_full_encode_s": round(full_s, 2),
        "grown_reuse_s": round(reused_s, 2),
        "grown_full_encoded": full.n_images,
        "grown_reuse_encoded": full.n_images - int(meta.get("reused", 0)),
        "ratio_reuse_over_full": round(reused_s / full_s, 3),
        "max_abs_diff_reused_vs_full": diff,
    }
    for k, v in result.items():
        if k != "machine":
            print(f"{k:30s} {v}")
    write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
