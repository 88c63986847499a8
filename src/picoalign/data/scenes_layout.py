"""Pure layout and caption logic of the ``scenes`` benchmark (no images, no fonts).

A scene is 2–4 emoji objects on the 7×7 grid of 32 px cells that EfficientNet-Lite0's 7×7
patch tokens see, so one object covers whole patches (1×1, 2×2 or 3×3 cells) and a word can
find "its" patches. Everything a caption says is a :data:`Claim` that :func:`holds` checks
against the layout: captions are generated from claims, never the other way round, so a test
can prove every caption true of its picture.

Why siblings: with one object per image, a bag of words identifies the image. Here every
scene has 1–2 *siblings* with the same object set (same background, often the same boxes)
but another arrangement (two objects swap places) or another count (one more or one fewer
copy). Only relations, positions and counts tell siblings apart, and the relation / count /
tag captions are chosen to be false of every sibling (:func:`scene_captions`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

GRID = 7  # cells per side = EfficientNet-Lite0 patch grid at 224 px
CELL = 32  # pixels per cell
FAMILIES = ("list", "relations", "counts", "tags")  # caption styles (phrasing families)
N_CAPTIONS = 5
SIZES, SIZE_WEIGHTS = (1, 2, 3), (0.2, 0.55, 0.25)  # object side in cells
BACKGROUNDS = ("plain", "gradient", "striped", "checkered", "dotted", "speckled")
NUMBERS = {1: "a", 2: "two", 3: "three"}
RELATIONS = ("left", "right", "above", "below", "next")
# The words each relation is written with (tests check text against these).
RELATION_WORDS: dict[str, tuple[str, ...]] = {
    "left": ("to the left of", "left of"),
    "right": ("to the right of", "right of"),
    "above": ("above", "over"),
    "below": ("below", "under", "beneath"),
    "next": ("next to", "beside"),
}


@dataclass(frozen=True)
class Box:
    """A square of ``size`` cells whose top-left cell is (x, y)."""

    x: int
    y: int
    size: int

    @property
    def x1(self) -> int:
        return self.x + self.size

    @property
    def y1(self) -> int:
        return self.y + self.size

    @property
    def cx(self) -> float:
        return self.x + self.size / 2

    @property
    def cy(self) -> float:
        return self.y + self.size / 2

    def overlaps(self, o: Box) -> bool:
        return self.x < o.x1 and o.x < self.x1 and self.y < o.y1 and o.y < self.y1

    def gap(self, o: Box) -> int:
        """Chebyshev distance in cells between two disjoint boxes (0 = touching)."""
        return max(o.x - self.x1, self.x - o.x1, o.y - self.y1, self.y - o.y1)


@dataclass(frozen=True)
class Obj:
    concept: str  # concept key (emoji group, e.g. "1f431")
    box: Box


@dataclass(frozen=True)
class Background:
    kind: str  # one of BACKGROUNDS
    colours: tuple[tuple[int, int, int], tuple[int, int, int]]
    param: int  # orientation / period / seed of the texture


@dataclass(frozen=True)
class Layout:
    objects: tuple[Obj, ...]
    background: Background

    def boxes(self, concept: str) -> list[Box]:
        return [o.box for o in self.objects if o.concept == concept]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for o in self.objects:
            out[o.concept] = out.get(o.concept, 0) + 1
        return out

    @property
    def combination(self) -> frozenset[str]:
        """The object set ignoring counts: what splits are made on."""
        return frozenset(o.concept for o in self.objects)


# ------------------------------------------------------------------------------ claims

Claim = tuple  # ("count", c, n) | ("only", cs) | ("rel", a, r, b) | ("pos", c, h, v)
# | ("size", c, "big"|"small") | ("bg", kind)


def relation(layout: Layout, a: str, r: str, b: str) -> bool:
    """Directional relations hold for *every* pair of a's and b's boxes (so "two apples to
    the left of a dog" means both apples); "next" holds if some pair is at most 1 cell apart
    and overlaps vertically (side by side)."""
    pairs = [(p, q) for p in layout.boxes(a) for q in layout.boxes(b)]
    if not pairs or a == b:
        return False
    if r == "left":
        return all(p.x1 <= q.x for p, q in pairs)
    if r == "right":
        return all(q.x1 <= p.x for p, q in pairs)
    if r == "above":
        return all(p.y1 <= q.y for p, q in pairs)
    if r == "below":
        return all(q.y1 <= p.y for p, q in pairs)
    if r == "next":
        return any(p.gap(q) <= 1 and p.y < q.y1 and q.y < p.y1 for p, q in pairs)
    raise ValueError(f"unknown relation {r!r}")


def _h(box: Box) -> str:
    return "left" if box.cx < 3 else "right" if box.cx > 4 else ""


def _v(box: Box) -> str:
    return "top" if box.cy < 3 else "bottom" if box.cy > 4 else ""


def region(layout: Layout, c: str) -> tuple[str, str] | None:
    """(horizontal, vertical) region shared by all of c's boxes ("" = middle), or None."""
    regions = {(_h(b), _v(b)) for b in layout.boxes(c)}
    return next(iter(regions)) if len(regions) == 1 else None


def size_attr(layout: Layout, c: str) -> str | None:
    """ "big"/"small" if c is one object strictly larger/smaller than every other object."""
    boxes = layout.boxes(c)
    others = [o.box.size for o in layout.objects if o.concept != c]
    if len(boxes) != 1 or not others:
        return None
    s = boxes[0].size
    return "big" if s > max(others) else "small" if s < min(others) else None


def holds(claim: Claim, layout: Layout) -> bool:
    """Whether ``claim`` is true of ``layout``."""
    kind = claim[0]
    if kind == "count":
        return layout.counts().get(claim[1], 0) == claim[2]
    if kind == "only":
        return set(claim[1]) == set(layout.counts())
    if kind == "rel":
        return relation(layout, claim[1], claim[2], claim[3])
    if kind == "pos":
        return region(layout, claim[1]) == (claim[2], claim[3])
    if kind == "size":
        return size_attr(layout, claim[1]) == claim[2]
    if kind == "bg":
        return layout.background.kind == claim[1]
    raise ValueError(f"unknown claim {claim!r}")


# ------------------------------------------------------------------------------ layouts


def random_background(rng: random.Random) -> Background:
    """Light-ish colours so that dark outlines stay visible, in one of several textures."""

    def colour(lo: int) -> tuple[int, int, int]:
        return (rng.randint(lo, 255), rng.randint(lo, 255), rng.randint(lo, 255))

    return Background(rng.choice(BACKGROUNDS), (colour(150), colour(90)), rng.randint(0, 999))


def place(
    rng: random.Random, concepts: Sequence[str], taken: Sequence[Box] = (), tries: int = 60
) -> list[Box] | None:
    """Random grid boxes of varied sizes for ``concepts``, disjoint from each other and from
    ``taken`` (None if the grid is too crowded after ``tries`` attempts)."""
    for _ in range(tries):
        boxes: list[Box] = []
        for _c in concepts:
            for _ in range(30):
                s = rng.choices(SIZES, SIZE_WEIGHTS)[0]
                b = Box(rng.randint(0, GRID - s), rng.randint(0, GRID - s), s)
                if not any(b.overlaps(o) for o in (*taken, *boxes)):
                    boxes.append(b)
                    break
            else:
                break
        if len(boxes) == len(concepts):
            return boxes
    return None


def random_layout(rng: random.Random, counts: dict[str, int]) -> Layout | None:
    names = [c for c, n in sorted(counts.items()) for _ in range(n)]
    boxes = place(rng, names)
    if boxes is None:
        return None
    return Layout(
        tuple(Obj(c, b) for c, b in zip(names, boxes, strict=True)), random_background(rng)
    )


def swap_sibling(rng: random.Random, layout: Layout) -> Layout | None:
    """Same boxes and background, two objects of different concepts swap places."""
    objs = list(layout.objects)
    pairs = [
        (i, j) for i in range(len(objs)) for j in range(i) if objs[i].concept != objs[j].concept
    ]
    if not pairs:
        return None
    i, j = rng.choice(pairs)
    objs[i], objs[j] = Obj(objs[j].concept, objs[i].box), Obj(objs[i].concept, objs[j].box)
    return Layout(tuple(objs), layout.background)


def count_sibling(rng: random.Random, layout: Layout) -> Layout | None:
    """One more copy of an object (if there is room, ≤ 4 objects and ≤ 3 copies) or one
    fewer (if it has a copy); everything else unchanged."""
    counts = layout.counts()
    options = [("add", c) for c, n in counts.items() if n < 3 and len(layout.objects) < 4]
    options += [("remove", c) for c, n in counts.items() if n > 1 and len(layout.objects) > 2]
    rng.shuffle(options)
    for op, c in options:
        if op == "remove":
            keep = list(layout.objects)
            idx = [k for k, o in enumerate(keep) if o.concept == c]
            del keep[rng.choice(idx)]
            return Layout(tuple(keep), layout.background)
        boxes = place(rng, [c], [o.box for o in layout.objects])
        if boxes:
            return Layout((*layout.objects, Obj(c, boxes[0])), layout.background)
    return None


def true_claims(layout: Layout) -> list[Claim]:
    """Every count, region and relation claim that a caption could make of ``layout``."""
    cs = sorted(layout.counts())
    out: list[Claim] = [("count", c, n) for c, n in layout.counts().items()]
    out += [("pos", c, *r) for c in cs if (r := region(layout, c)) is not None]
    out += [
        ("rel", p, r, q) for p in cs for q in cs for r in RELATIONS if relation(layout, p, r, q)
    ]
    return out


def distinguishable(a: Layout, b: Layout) -> bool:
    """Each of a and b has a claim that is false of the other, so a caption of either one
    can tell it from the other (a mere difference is not enough: a caption says what *is*)."""
    return any(not holds(c, b) for c in true_claims(a)) and any(
        not holds(c, a) for c in true_claims(b)
    )


def random_counts(rng: random.Random, pool: Sequence[str]) -> dict[str, int]:
    """2–4 objects: 2–4 distinct concepts, or fewer with one of them repeated (counts)."""
    total = rng.choices((2, 3, 4), (0.3, 0.4, 0.3))[0]
    distinct = total if (total == 2 or rng.random() < 0.6) else rng.randint(2, total - 1)
    chosen = rng.sample(list(pool), distinct)
    counts = dict.fromkeys(chosen, 1)
    counts[chosen[0]] += total - distinct
    return counts


def scene_family(rng: random.Random, counts: dict[str, int]) -> list[Layout] | None:
    """A base layout and 1–2 distinguishable siblings (arrangement and/or count)."""
    base = random_layout(rng, counts)
    if base is None:
        return None
    kinds = [swap_sibling, count_sibling]
    rng.shuffle(kinds)
    out = [base]
    for make in kinds[: rng.choice((1, 2))]:
        for _ in range(10):
            sib = make(rng, base)
            if sib is not None and all(distinguishable(sib, o) for o in out):
                out.append(sib)
                break
    return out if len(out) > 1 else None
