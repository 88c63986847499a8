"""The ``scenes`` benchmark: layouts and captions are pure and true, splits keep combinations
apart, siblings exist and are told apart, rendering is deterministic and style-paired.

Pure layout/caption tests run everywhere; the rest need Twemoji (and Noto where named) and
skip with the install command otherwise. Sizes are tiny (≈ 70 images)."""

from __future__ import annotations

import random
import re

import pytest

from cli_runner import run_cli
from picoalign.data import builtin, load_dataset, parse_spec
from picoalign.data.base import DataError
from picoalign.data.scenes_layout import (
    FAMILIES,
    RELATION_WORDS,
    Background,
    Box,
    Layout,
    Obj,
    holds,
    random_counts,
    relation,
    scene_family,
    swap_sibling,
)
from picoalign.data.scenes_text import plural, scene_captions, tells_apart

needs_twemoji = pytest.mark.skipif(
    not builtin.twemoji_installed(), reason=f"Twemoji not installed: {builtin.TWEMOJI_HINT}"
)
needs_noto = pytest.mark.skipif(
    not builtin.noto_installed(), reason=f"Noto not installed: {builtin.NOTO_HINT}"
)
SIZE = 70
BG = Background("plain", ((255, 255, 255), (0, 0, 0)), 0)
FAKE_NAMES = {c: c for c in ("cat", "pizza", "bicycle", "apple", "dog", "bus", "fox", "owl")}


def _layout(*objs: tuple[str, int, int, int]) -> Layout:
    return Layout(tuple(Obj(c, Box(x, y, s)) for c, x, y, s in objs), BG)


def _check_text(text: str, claims: tuple, names: dict[str, str]) -> None:
    """The words agree with the claims: every claimed object is named (singular or plural)
    and every relation claim is written with one of that relation's words."""
    for claim in claims:
        if claim[0] in ("count", "pos", "size"):
            name = names[claim[1]]
            assert name in text or plural(name) in text, (text, claim)
        if claim[0] == "count" and claim[2] > 1:
            assert plural(names[claim[1]]) in text, (text, claim)
        if claim[0] == "rel":
            assert any(w in text for w in RELATION_WORDS[claim[2]]), (text, claim)


# ---------------------------------------------------------------------------- pure logic


def test_relations_follow_positions() -> None:
    lay = _layout(("cat", 0, 0, 2), ("pizza", 4, 0, 2), ("dog", 0, 4, 1), ("dog", 1, 5, 2))
    assert relation(lay, "cat", "left", "pizza") and relation(lay, "pizza", "right", "cat")
    assert not relation(lay, "pizza", "left", "cat")
    assert relation(lay, "cat", "above", "dog")  # holds for both dogs
    assert relation(lay, "dog", "below", "cat") and relation(lay, "dog", "left", "pizza")
    assert not relation(lay, "dog", "right", "cat")  # the dogs' boxes overlap the cat's in x
    assert holds(("count", "dog", 2), lay) and not holds(("count", "dog", 1), lay)
    assert holds(("pos", "cat", "left", "top"), lay)
    assert holds(("size", "pizza", "big"), lay) is False  # ties with the cat and a dog


def test_swap_sibling_keeps_boxes_and_flips_a_relation() -> None:
    lay = _layout(("cat", 0, 0, 2), ("pizza", 4, 0, 2))
    sib = swap_sibling(random.Random(0), lay)
    assert sib is not None and [o.box for o in sib.objects] == [o.box for o in lay.objects]
    assert relation(sib, "pizza", "left", "cat") and not relation(sib, "cat", "left", "pizza")


def test_generated_captions_are_true_and_tell_siblings_apart() -> None:
    rng = random.Random(3)
    n_families = 0
    while n_families < 40:
        family = scene_family(rng, random_counts(rng, sorted(FAKE_NAMES)))
        if family is None:
            continue
        n_families += 1
        boxes = [o.box for lay in family for o in lay.objects]
        assert all(len(lay.objects) in (2, 3, 4) for lay in family)
        for lay in family:
            objs = [o.box for o in lay.objects]
            assert not any(a.overlaps(b) for i, a in enumerate(objs) for b in objs[:i])
            assert all(min(b.x, b.y) >= 0 and max(b.x1, b.y1) <= 7 for b in boxes)
            sibs = [s for s in family if s is not lay]
            caps = scene_captions(rng, lay, sibs, FAKE_NAMES)
            assert len(caps) == 5 and len({t for t, _ in caps}) == 5
            for text, claims in caps:
                assert all(holds(c, lay) for c in claims), text
                _check_text(text, claims, FAKE_NAMES)
            for s in sibs:  # some caption is false of each sibling
                assert any(tells_apart(c, [s]) for _, c in caps)


# ---------------------------------------------------------------------------- datasets


@pytest.fixture(scope="module")
def twemoji_scenes():
    if not builtin.twemoji_installed():
        pytest.skip(f"Twemoji not installed: {builtin.TWEMOJI_HINT}")
    return load_dataset(f"scenes:twemoji:size={SIZE}")


@needs_twemoji
def test_deterministic_bytes_and_captions(twemoji_scenes) -> None:
    from picoalign.data import scenes

    again = load_dataset(f"scenes:twemoji:size={SIZE}:seed=0")
    assert again.items == twemoji_scenes.items
    assert again.fingerprint == twemoji_scenes.fingerprint
    first = twemoji_scenes.load(twemoji_scenes.items[0]).tobytes()
    scenes.glyph.cache_clear()
    scenes._sized.cache_clear()
    assert again.load(again.items[0]).tobytes() == first
    other = load_dataset(f"scenes:twemoji:size={SIZE}:seed=1")
    assert other.fingerprint != twemoji_scenes.fingerprint
    assert [it.captions for it in other.items] != [it.captions for it in twemoji_scenes.items]
    im = twemoji_scenes.load(twemoji_scenes.items[0])
    assert im.size == (224, 224) and im.mode == "RGB"


@needs_twemoji
def test_splits_combinations_and_concepts(twemoji_scenes) -> None:
    from picoalign.data.scenes import decode_source

    by_split = {
        s: [it for it in twemoji_scenes.items if it.split == s] for s in ("train", "val", "test")
    }
    assert all(len(v) >= 10 for v in by_split.values())
    assert all(len(it.captions) == 5 for it in twemoji_scenes.items)
    groups = {s: {it.group for it in v} for s, v in by_split.items()}
    assert not groups["test"] & groups["train"] and not groups["val"] & groups["train"]

    def concepts(split: str) -> set[str]:
        return {o.concept for it in by_split[split] for o in decode_source(it.source)[1].objects}

    assert concepts("test") <= concepts("train")  # shared concepts, unseen combinations
    unseen = load_dataset(f"scenes:unseen:size={SIZE}")
    u = {
        s: {
            o.concept
            for it in unseen.items
            if it.split == s
            for o in decode_source(it.source)[1].objects
        }
        for s in ("train", "test")
    }
    assert u["test"] and not u["test"] & u["train"]


@needs_twemoji
def test_every_test_scene_has_siblings_that_captions_tell_apart(twemoji_scenes) -> None:
    from picoalign.data.scenes import decode_source, vocabulary

    names = vocabulary()
    test = [it for it in twemoji_scenes.items if it.split == "test"]
    for it in test:
        lay = decode_source(it.source)[1]
        sibs = [o for o in test if o.group == it.group and o.key != it.key]
        assert 1 <= len(sibs) <= 2, it.key
        for s in sibs:
            other = decode_source(s.source)[1]
            assert other.combination == lay.combination and other != lay
        for text in it.captions:  # every object a caption names is in the picture
            for concept, name in names.items():
                if re.search(rf"\b{re.escape(name)}\b", text) and concept not in lay.counts():
                    assert any(name in names[c] for c in lay.counts()), (text, name)


@needs_twemoji
def test_caption_shift_holds_back_a_family() -> None:
    ds = load_dataset(f"scenes:caption:size={SIZE}:held=relations")
    directional = re.compile(r"\b(left of|right of|above|over|below|under|beneath|them)\b")
    assert not any(
        directional.search(c) for it in ds.items if it.split != "test" for c in it.captions
    )
    # a relations caption falls back to regions where no relation holds for an object
    test = [it for it in ds.items if it.split == "test"]
    assert sum(bool(directional.search(" ".join(it.captions))) for it in test) >= 0.8 * len(test)


@needs_twemoji
@needs_noto
def test_style_pairing_same_layout_other_glyphs() -> None:
    from picoalign.data.scenes import decode_source

    tw = load_dataset(f"scenes:twemoji:size={SIZE}")
    no = load_dataset(f"scenes:noto:size={SIZE}")
    shift = load_dataset(f"scenes:style:size={SIZE}")
    for a, b in zip(tw.items[:5], no.items[:5], strict=True):
        assert decode_source(a.source)[1] == decode_source(b.source)[1]
        assert a.captions == b.captions and a.group == b.group
        assert decode_source(a.source)[0] == "twemoji" and decode_source(b.source)[0] == "noto"
        assert tw.load(a).tobytes() != no.load(b).tobytes()
    styles = {(it.split, decode_source(it.source)[0]) for it in shift.items}
    assert styles == {("train", "twemoji"), ("val", "twemoji"), ("test", "noto")}


@needs_twemoji
def test_noto_protocols_fail_with_the_hint_without_noto(monkeypatch) -> None:
    monkeypatch.setattr(builtin, "noto_installed", lambda *a: False)
    for protocol in ("noto", "style", "both"):
        with pytest.raises(DataError, match="fonts-noto-color-emoji"):
            load_dataset(f"scenes:{protocol}:size={SIZE}")


def test_spelling_errors() -> None:
    with pytest.raises(ValueError, match="must be spelled 'scenes:PROTOCOL"):
        parse_spec("scenes")
    for bad in ("scenes:nope", "scenes:twemoji:bogus=1", "scenes:twemoji:size=x"):
        with pytest.raises(ValueError):
            load_dataset(bad)
    with pytest.raises(ValueError, match="held"):
        load_dataset("scenes:caption:held=poems")
    assert set(FAMILIES) == {"list", "relations", "counts", "tags"}


def test_cli_lists_scenes() -> None:
    rc, out, _ = run_cli("datasets")
    assert rc == 0 and "scenes:PROTOCOL " in out and "size=N" in out


@needs_twemoji
def test_dataset_captions_are_claims_true_of_the_rendered_layout(twemoji_scenes) -> None:
    from picoalign.data.scenes import decode_source, family_captions, generate_scenes, vocabulary

    names = vocabulary()
    scenes = generate_scenes(sorted(names), size=SIZE, seed=0)
    by_id = {it.key.rsplit(":", 1)[1]: it for it in twemoji_scenes.items}
    for split in ("train", "val", "test"):
        part = [s for s in scenes if s.split == split]
        for sid, caps in family_captions(part, names, FAMILIES, 0).items():
            item = by_id[sid]
            layout = decode_source(item.source)[1]
            assert layout == next(s.layout for s in part if s.id == sid)
            assert tuple(t for t, _ in caps) == item.captions
            for text, claims in caps:
                assert all(holds(c, layout) for c in claims), text
                _check_text(text, claims, names)


@needs_twemoji
@needs_noto
def test_every_concept_has_a_noto_twin() -> None:
    from picoalign.data.scenes import VOCAB_SIZE, glyph, vocabulary

    names = vocabulary()
    assert len(names) == VOCAB_SIZE
    for concept in names:  # raises DataError if the font has no glyph
        assert glyph("noto", concept).size[0] > 8 and glyph("twemoji", concept).size[0] > 8
