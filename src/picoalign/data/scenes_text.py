"""Captions of ``scenes`` layouts, in four phrasing families (the benchmark's caption styles).

* ``list``      – "a cat, a pizza and a bicycle" (every object, with its count)
* ``relations`` – "a cat to the left of a pizza, a bicycle below them"
* ``counts``    – counts and attributes where true: "two apples next to a big dog on a
  striped background"
* ``tags``      – terse: "cat top left, 2 apples, bicycle right"

Each generator returns ``(text, claims)``; the claims are what the text asserts and are
checked with :func:`scenes_layout.holds` (a generator only emits claims it has checked).
:func:`scene_captions` prefers captions that are false of every sibling, so that the five
captions of a scene tell it apart from its siblings wherever the family can.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence

from picoalign.data.scenes_layout import (
    FAMILIES,
    N_CAPTIONS,
    NUMBERS,
    RELATION_WORDS,
    Claim,
    Layout,
    holds,
    region,
    relation,
    size_attr,
)

Caption = tuple[str, tuple[Claim, ...]]
Names = Mapping[str, str]
DIRECTIONS = ("left", "right", "above", "below")


def plural(name: str) -> str:
    """Naive English plural of the last word (names that already end in "s" are excluded
    from the vocabulary, see ``scenes.vocabulary``)."""
    if name.endswith(("s", "x", "z", "ch", "sh")):
        return name + "es"
    if name.endswith("y") and name[-2:-1] not in "aeiou":
        return name[:-1] + "ies"
    return name + "s"


def noun_phrase(name: str, n: int, size: str | None = None) -> str:
    if n > 1:
        return f"{NUMBERS[n]} {plural(name)}"
    words = f"{size} {name}" if size else name
    return ("an " if words[0] in "aeiou" else "a ") + words


def join(parts: Sequence[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def region_words(h: str, v: str) -> str:
    if h and v:
        return f"in the {v} {h}"
    if v:
        return f"at the {v}"
    if h:
        return f"on the {h}"
    return "in the middle"


def _counts(layout: Layout) -> list[Claim]:
    return [("count", c, n) for c, n in sorted(layout.counts().items())]


def list_caption(rng: random.Random, layout: Layout, names: Names) -> Caption:
    counts = layout.counts()
    order = sorted(counts)
    rng.shuffle(order)
    prefix = rng.choice(("", "a picture of ", "a scene with ", "an image showing "))
    text = prefix + join([noun_phrase(names[c], counts[c]) for c in order])
    return text, (*_counts(layout), ("only", tuple(sorted(counts))))


def relations_caption(rng: random.Random, layout: Layout, names: Names) -> Caption:
    """A chain of clauses that mentions every object: each new object is related to one
    already mentioned (or to all of them: "them"), else placed by region."""
    counts = layout.counts()
    order = sorted(counts)
    rng.shuffle(order)

    def the(c: str) -> str:
        return "the " + (plural(names[c]) if counts[c] > 1 else names[c])

    claims: list[Claim] = _counts(layout)
    clauses: list[str] = []
    first, rest = order[0], order[1:]
    rels = [r for r in DIRECTIONS if relation(layout, rest[0], r, first)]
    if rels:
        r = rng.choice(rels)
        word = rng.choice(RELATION_WORDS[r])
        clauses.append(f"{noun_phrase(names[rest[0]], counts[rest[0]])} {word} {the(first)}")
        clauses[0] = clauses[0].replace(the(first), noun_phrase(names[first], counts[first]))
        claims.append(("rel", rest[0], r, first))
        mentioned, rest = [first, rest[0]], rest[1:]
    else:
        clauses.append(_placed(layout, first, names, counts, claims))
        mentioned = [first]
    for c in rest:
        np_ = noun_phrase(names[c], counts[c])
        them = [r for r in DIRECTIONS if all(relation(layout, c, r, m) for m in mentioned)]
        opts = [(r, m) for m in mentioned for r in DIRECTIONS if relation(layout, c, r, m)]
        if len(mentioned) > 1 and them and rng.random() < 0.5:
            r = rng.choice(them)
            clauses.append(f"{np_} {rng.choice(RELATION_WORDS[r])} them")
            claims += [("rel", c, r, m) for m in mentioned]
        elif opts:
            r, m = rng.choice(opts)
            clauses.append(f"{np_} {rng.choice(RELATION_WORDS[r])} {the(m)}")
            claims.append(("rel", c, r, m))
        else:
            clauses.append(_placed(layout, c, names, counts, claims))
        mentioned.append(c)
    return ", ".join(clauses), tuple(claims)


def _placed(layout: Layout, c: str, names: Names, counts: dict, claims: list[Claim]) -> str:
    np_ = noun_phrase(names[c], counts[c])
    where = region(layout, c)
    if where is None:
        return np_
    claims.append(("pos", c, *where))
    return f"{np_} {region_words(*where)}"


def counts_caption(rng: random.Random, layout: Layout, names: Names) -> Caption:
    counts = layout.counts()
    order = sorted(counts)
    rng.shuffle(order)
    claims: list[Claim] = _counts(layout)
    phrases = []
    for c in order:
        size = size_attr(layout, c) if rng.random() < 0.8 else None
        if size:
            claims.append(("size", c, size))
        phrases.append(noun_phrase(names[c], counts[c], size))
    if relation(layout, order[0], "next", order[1]) and rng.random() < 0.7:
        word = rng.choice(RELATION_WORDS["next"])
        head = f"{phrases[0]} {word} {phrases[1]}"
        claims.append(("rel", order[0], "next", order[1]))
        text = join([head, *phrases[2:]])
    else:
        text = join(phrases)
    if rng.random() < 0.5:
        text += f" on a {layout.background.kind} background"
        claims.append(("bg", layout.background.kind))
    return text, tuple(claims)


def tags_caption(rng: random.Random, layout: Layout, names: Names) -> Caption:
    counts = layout.counts()
    order = sorted(counts)
    rng.shuffle(order)
    claims: list[Claim] = _counts(layout)
    tags = []
    for c in order:
        tag = names[c] if counts[c] == 1 else f"{counts[c]} {plural(names[c])}"
        where = region(layout, c)
        if where is not None and rng.random() < 0.85:
            h, v = where
            tag += " " + (" ".join(w for w in (v, h) if w) or "middle")
            claims.append(("pos", c, h, v))
        tags.append(tag)
    return ", ".join(tags), tuple(claims)


GENERATORS: dict[str, Callable[[random.Random, Layout, Names], Caption]] = {
    "list": list_caption,
    "relations": relations_caption,
    "counts": counts_caption,
    "tags": tags_caption,
}


def tells_apart(claims: Sequence[Claim], siblings: Sequence[Layout]) -> bool:
    """True if the caption is false of every sibling (it tells its scene from them)."""
    return all(any(not holds(c, s) for c in claims) for s in siblings)


def scene_captions(
    rng: random.Random,
    layout: Layout,
    siblings: Sequence[Layout],
    names: Names,
    families: Sequence[str] = FAMILIES,
    n: int = N_CAPTIONS,
    tries: int = 12,
) -> list[Caption]:
    """``n`` distinct captions cycling through ``families`` (each family at least once when
    n ≥ len(families)); within a family, the first candidate false of every sibling wins."""
    unknown = set(families) - set(GENERATORS)
    if unknown or not families:
        raise ValueError(f"caption families must be among {FAMILIES}, got {list(families)}")
    fams = list(families)
    rng.shuffle(fams)
    out: list[Caption] = []
    for i in range(n):
        gen = GENERATORS[fams[i % len(fams)]]
        best: Caption | None = None
        for _ in range(tries):
            cap = gen(rng, layout, names)
            if any(cap[0] == o[0] for o in out):
                continue
            if best is None or tells_apart(cap[1], siblings):
                best = cap
            if tells_apart(cap[1], siblings):
                break
        best = best or gen(rng, layout, names)
        if not all(holds(c, layout) for c in best[1]):  # generators must not lie
            raise AssertionError(f"caption {best[0]!r} is false of its layout")
        out.append(best)
    if any(not any(tells_apart(c, [s]) for _, c in out) for s in siblings):
        # Rare (≈ 1 in 1,000 pairs): no caption tells a sibling apart. Search longer for one
        # that tells all siblings apart and let it replace a caption of its own family.
        for _ in range(20 * tries):
            fam = rng.choice(fams)
            cap = GENERATORS[fam](rng, layout, names)
            if tells_apart(cap[1], siblings) and all(cap[0] != o[0] for o in out):
                out[max(i for i in range(n) if fams[i % len(fams)] == fam)] = cap
                break
    return out
