"""picoalign's own format, JSON lines: one image per line (see :mod:`picoalign.data.formats`
for the whole format), or one caption per line with ``caption``: lines of one image are then
merged into one item (a CSV turned into JSONL has that shape)."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

from picoalign.data._text import Problems, RepeatedKey, loads_json, read_lines
from picoalign.data.base import (
    SPLITS,
    DataError,
    ImageCaptionDataset,
    Item,
    items_fingerprint,
    seeded_split,
)
from picoalign.data.images import FileLoader
from picoalign.data.records import inside, split_value, stat_image, text_list

DEFAULT_SPLITS = ("train", "seeded")  # what a JSONL line without "split" may be declared


# the keys a line may use; others are ignored (users' files carry ids, licences ...), but a
# missing key's message names them: "imag" is the likelier cause than a missing "image"
KEYS = frozenset({"image", "captions", "caption", "split", "group"})


def _unknown(keys: list[str]) -> str:
    return f" (the line has unknown key {keys[0]!r}: a typo?)" if keys else ""


def _jsonl_record(
    text: str, base: Path, seed: int, default_split: str | None
) -> tuple[Item, bool, list[str]]:
    """The line's item, whether it is a one-caption line (``caption``, not ``captions``), and
    its unknown keys (for the message of a missing split)."""
    try:
        rec = loads_json(text)
    except json.JSONDecodeError as e:
        raise DataError(f"invalid JSON ({e.msg} at column {e.colno})") from None
    except RepeatedKey as e:  # json keeps the last: "split" given twice chose the split
        raise DataError(str(e)) from None
    if not isinstance(rec, dict):
        got = {type(None): "null", list: "a list", str: "a string", bool: "true/false"}
        raise DataError(f"expected a JSON object, got {got.get(type(rec), 'a number')}")
    unknown = sorted(set(rec) - KEYS)
    if "image" not in rec:
        raise DataError('missing key "image"' + _unknown(unknown))
    if not isinstance(rec["image"], str) or not rec["image"].strip():
        raise DataError('"image" must be a non-empty string (a path)')
    if "captions" in rec and "caption" in rec:
        raise DataError('both "caption" and "captions": keep one (a list in "captions")')
    if "captions" in rec:
        captions = text_list(rec["captions"], '"captions"')
    elif "caption" in rec:
        one = rec["caption"]
        if not isinstance(one, str) or not one.strip():
            got = "empty" if isinstance(one, str) else f"a {type(one).__name__}"
            raise DataError(f'"caption" must be a non-empty string (got {got})')
        captions = text_list([one], '"caption"')
    else:
        raise DataError(
            'missing key "captions" (a list of strings) or "caption" (one string)'
            + _unknown(unknown)
        )
    full, key = inside(base, rec["image"], "the data file's folder")
    group = rec.get("group", key)
    if not isinstance(group, str) or not group:
        raise DataError('"group" must be a non-empty string')
    split = rec.get("split")
    if split is not None:
        split = split_value(split)
    elif default_split == "seeded":
        split = seeded_split(group, seed)
    elif default_split is not None:
        split = default_split
    return Item(key, captions, split or "", group, str(full)), "captions" not in rec, unknown


def _missing_split(unknown: list[str] = ()) -> str:
    return (
        f'missing key "split"{_unknown(list(unknown))} (expected one of {", ".join(SPLITS)}; '
        "if lines without one are training data, spell the dataset "
        "jsonl:PATH:default-split=train)"
    )


def _no_split_at_all(path: Path, n: int) -> str:
    """The one message for a file none of whose lines has a split: a file-wide choice the
    user has not made, not ``n`` separate mistakes (and ``--skip-bad`` would drop them all)."""
    return (
        f'{path}: none of its {n} lines has a "split" key (expected one of '
        f"{', '.join(SPLITS)} on each line). For data without splits, spell the dataset "
        f"jsonl:{path}:default-split=seeded (a seeded 70/10/20 split by group) or "
        f"jsonl:{path}:default-split=train (every line trains; val is carved from it)"
    )


def _merge(items: list[Item], at: int, item: Item, first: str) -> None:
    """Add a one-caption line's caption to the item an earlier such line made (a CSV turned
    into JSONL has one line per image and caption). Its split and group must agree: one
    image in two splits is a leak, refused."""
    have = items[at]
    for what in ("split", "group"):
        if getattr(item, what) != getattr(have, what):
            raise DataError(
                f"image {item.key!r} is {what} {getattr(have, what)!r} at {first} but "
                f"{getattr(item, what)!r} here: one image, one {what}"
            )
    items[at] = replace(have, captions=(*have.captions, *item.captions))


def jsonl(
    path: Path | str,
    *,
    seed: int = 0,
    skip_bad: bool = False,
    root: Path | str | None = None,
    default_split: str | None = None,
) -> ImageCaptionDataset:
    """Load a JSON-lines dataset (format in the module docstring). Blank lines are ignored.

    ``default_split`` (None, ``"train"`` or ``"seeded"``): the split of lines without one;
    None makes such a line an error."""
    if default_split not in (None, *DEFAULT_SPLITS):
        raise ValueError(  # named as the spec spells it (jsonl:PATH:default-split=...)
            f"default-split must be {' or '.join(DEFAULT_SPLITS)}, got {default_split!r}"
        )
    path = Path(path)
    base = Path(root) if root is not None else path.parent
    problems = Problems(skip_bad)
    items: list[Item] = []
    where_of: dict[str, str] = {}
    stats: list[str] = []
    no_split: list[tuple[str, str]] = []
    real_of: dict[str, str] = {}  # the file itself: a relative and an absolute path to one
    single: dict[str, int] = {}  # key -> its item, for images named by one-caption lines
    for n, text in read_lines(path, problems):
        if text is None or not text.strip():
            continue  # blank, or not UTF-8 (already reported by read_lines)
        where = f"{path} line {n}"
        try:
            item, one, unknown = _jsonl_record(text, base, seed, default_split)
            if not item.split and item.key in where_of:  # a merge would hide it
                no_split.append((where, _missing_split(unknown)))
                raise DataError(no_split[-1][1])
            if item.key in where_of and one and item.key in single:
                _merge(items, single[item.key], item, where_of[item.key])
                continue  # one image, its captions on several lines: one item
            if item.key in where_of:
                raise DataError(
                    f"duplicate image {item.key!r} (first at {where_of[item.key]}): give each "
                    'image one line with all its captions in "captions", or one line per '
                    'caption with "caption"'
                )
            real = os.path.realpath(item.source)
            if real in real_of:
                raise DataError(
                    f"duplicate image {item.key!r}: the same file as {real_of[real]} (another "
                    "path to it)"
                )
            stat = stat_image(Path(item.source))
            if not item.split:  # checked last: a missing file is the more useful message
                no_split.append((where, _missing_split(unknown)))
                raise DataError(no_split[-1][1])
            stats.append(stat)
        except DataError as e:
            problems.add(where, str(e))
            continue
        where_of[item.key] = where
        real_of[real] = where
        if one:
            single[item.key] = len(items)
        items.append(item)
    if no_split and not items:  # no line has a split: one message for the file
        if len(no_split) == len(problems.skipped):
            raise DataError(_no_split_at_all(path, len(no_split)))
        first = problems.skipped.index(no_split[0])
        problems.skipped = [p for p in problems.skipped if p not in no_split]
        problems.skipped.insert(first, (str(path), _no_split_at_all(path, len(no_split))))
    if not items:
        problems.empty(str(path))
    fp = items_fingerprint(
        "jsonl", str(path.resolve()), str(base.resolve()), str(seed), *stats, items=items
    )
    return problems.finish(
        ImageCaptionDataset(path.stem, items, FileLoader(where_of=where_of), fp, root=base)
    )
