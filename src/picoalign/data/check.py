"""Everything about a dataset that can be wrong is found here, before any encoding starts.

:func:`prepare_dataset` is the one entry point of the CLI (through
``features.dataset_features``): it loads a spec, reads every image *header*
(never the pixels) in one threaded pass, and then either

* raises one :class:`DataProblems` listing every bad line and every bad image with its file
  and line, a count and the ``--skip-bad`` hint, or
* (``skip_bad``) drops those entries and lists them in ``dataset.skipped``;

then makes sure the splits a command needs exist: a dataset without a val split gets one
carved out of train (by group, seeded, recorded in ``dataset.notes`` and the fingerprint)
unless its spec says ``val=strict``, and an empty split a command needs is an error *now*,
not a ``torch.cat`` crash after an epoch of training.
"""

from __future__ import annotations

import copy
import math
import sys
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from picoalign.data.base import (
    SPLITS,
    DataError,
    DataProblems,
    ImageCaptionDataset,
    Item,
    digest,
    group_unit,
    seeded_split,
)
from picoalign.data.images import FileLoader, allow_pixels
from picoalign.data.spec import load_dataset, spec_options
from picoalign.progress import progress_bar

VAL_FRACTION = 0.1  # of train's groups, when a dataset has no val split
Report = Callable[[str], None]


def prepare_dataset(
    spec: str,
    *,
    seed: int = 0,
    skip_bad: bool = False,
    max_image_pixels: int | None = None,
    need_splits: Sequence[str] = (),
    progress: bool = False,
    report: Report = print,
) -> ImageCaptionDataset:
    """The dataset of ``spec``, checked whole before any work (see the module docstring).

    ``need_splits``: splits the caller will use (``train`` and its eval split for training);
    each must be non-empty after the val carve, else DataError. ``report`` receives the
    human-readable notes (skipped entries, the carved val split).
    """
    allow_pixels(max_image_pixels)
    options = spec_options(spec)
    val = _val_option(spec, options.get("val", "auto"))
    try:
        dataset = load_dataset(spec, seed=seed, skip_bad=skip_bad)
        problems: list[tuple[str, str]] = []
    except DataProblems as e:  # bad lines: add the bad images of the good lines, then raise
        if e.partial is None:
            raise
        dataset, problems = e.partial, e.problems
    # copies, not mutation: built-in datasets may be shared objects
    dataset = replace(dataset, notes={**dataset.notes, "source_fingerprint": dataset.fingerprint})
    if isinstance(dataset.load, FileLoader) and (max_image_pixels is not None or skip_bad):
        dataset.load = copy.copy(dataset.load)
        if max_image_pixels is not None:
            dataset.load.max_pixels = max_image_pixels
        dataset.load.decode = skip_bad  # a file with intact headers but broken data is skipped
    dataset, bad_images = check_images(dataset, progress=progress)
    if problems or (bad_images and not skip_bad):
        raise DataProblems([*problems, *bad_images], partial=dataset)
    if dataset.skipped:
        n = len(dataset.skipped)
        report(f"skipped {n} bad {'entry' if n == 1 else 'entries'} of {spec}:")
        for where, why in dataset.skipped[:20]:
            report(f"  {where}: {why}")
        if len(dataset.skipped) > 20:
            report(f"  ... and {len(dataset.skipped) - 20} more")
        dataset.notes = {  # a copy made above: recorded in the run's data.json
            **dataset.notes,
            "skipped": len(dataset.skipped),
            "skipped_first": [f"{w}: {y}" for w, y in dataset.skipped[:100]],
        }
    if not dataset.items:
        raise DataError(f"--data {spec}: the dataset has no usable items")
    passed = [  # a gallery folder's files that are not items (picoalign.data.folder)
        f"{n} {one if n == 1 else many}"
        for n, one, many in (
            (
                dataset.notes.get("not_images", 0),
                "file that is not an image",
                "files that are not images",
            ),
            (
                dataset.notes.get("duplicates", 0),
                "link to an image already in it",
                "links to images already in it",
            ),
            (dataset.notes.get("broken_links", 0), "broken link", "broken links"),
            (
                dataset.notes.get("picoalign_outputs", 0),
                f"picoalign output ({dataset.notes.get('picoalign_outputs_first')}: an index, "
                "a run or a contact sheet)",
                f"picoalign outputs (indexes, runs, contact sheets; e.g. "
                f"{dataset.notes.get('picoalign_outputs_first')})",
            ),
        )
        if n
    ]
    if passed:
        report(f"{spec}: {len(dataset.items)} images; passed over {' and '.join(passed)}")
    if val != "strict":  # said only where the caller reads train or val (not `--split test`)
        reads_carve = not need_splits or bool({"train", "val", "all"} & set(need_splits))
        say = report if reads_carve else None
        dataset = carve_val(dataset, seed=seed, fraction=val, report=say)
    require_splits(dataset, need_splits, spec, strict=val == "strict")
    if not need_splits or {"train", "all"} & set(need_splits):  # where training is read
        _warn_split_groups(dataset, spec)
    return dataset


def _warn_split_groups(dataset: ImageCaptionDataset, spec: str) -> None:
    """A group is what must stay in one split (docs/data.md): a group found in train and in
    val or test lets the model see a test concept in training, and the user asked for it
    not to. Said, not refused: the splits are the user's to choose."""
    splits_of: dict[str, set[str]] = {}
    for it in dataset.items:
        splits_of.setdefault(it.group, set()).add(it.split)
    leaky = sorted(g for g, s in splits_of.items() if len(s) > 1)
    if leaky:
        g = leaky[0]
        warnings.warn(
            f"{spec}: {len(leaky)} group{'s' if len(leaky) > 1 else ''} "
            f"{'have' if len(leaky) > 1 else 'has'} items in more than one split "
            f"(e.g. {g!r}: {', '.join(sorted(splits_of[g]))}); a group is what must stay in "
            "one split, so a concept tested on is also trained or selected on",
            stacklevel=3,
        )


def _val_option(spec: str, value: str) -> float | str:
    if value in ("auto", "strict"):
        return VAL_FRACTION if value == "auto" else value
    try:
        fraction = float(value)
    except ValueError:
        fraction = math.nan
    if not 0 < fraction < 1:
        raise ValueError(
            f"dataset {spec!r}: val={value} must be auto, strict or a fraction in (0, 1)"
        )
    return fraction


def check_images(
    dataset: ImageCaptionDataset, *, progress: bool = False, workers: int = 4
) -> tuple[ImageCaptionDataset, list[tuple[str, str]]]:
    """Read every image header of a file-backed ``dataset`` (threads: Pillow's I/O releases
    the GIL). Returns the dataset without the bad items (their problems join ``skipped``,
    the fingerprint changes only if one was dropped) and the problems, in item order."""
    probe = getattr(dataset.load, "probe", None)
    if dataset.features is not None or probe is None or not dataset.items:
        return dataset, []

    def check(item: Item) -> tuple[str, str] | None:
        try:
            probe(item)
        except DataError as e:
            where, _, why = str(e).partition(": image ")
            path, _, reason = why.partition(": ")
            if why and path == item.source and where.endswith(item.key):  # a folder's file:
                return path, reason  # "g/a.png: not an image", not "g a.png: image g/a.png: …"
            return (where, f"image {why}") if why else (item.source or item.key, str(e))
        return None

    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(
            progress_bar(
                pool.map(check, dataset.items),
                total=len(dataset.items),
                desc="checking images",
                unit="img",
                disable=not progress,
                leave=False,
            )
        )
    bad = [r for r in results if r is not None]
    if not bad:
        return dataset, []
    items = [it for it, r in zip(dataset.items, results, strict=True) if r is None]
    dropped = replace(
        dataset,
        items=items,
        fingerprint=digest(dataset.fingerprint, "decodable", *(w for w, _ in bad)),
        skipped=[*dataset.skipped, *bad],
    )
    return dropped, bad


def carve_val(
    dataset: ImageCaptionDataset,
    *,
    seed: int = 0,
    fraction: float = VAL_FRACTION,
    report: Report | None = None,
) -> ImageCaptionDataset:
    """If ``dataset`` has train items but no val split, move a seeded ``fraction`` of
    train's *groups* to val (two images of one concept never straddle train and val).

    Why: train + test only is the commonest layout, and model selection needs a held-out
    split that is not the test set. The carve is deterministic in (seed, group), recorded in
    ``notes["val"]`` and in the fingerprint (so the feature cache and the run know it).
    """
    splits = {it.split for it in dataset.items}
    if "val" in splits or "train" not in splits:
        return dataset
    groups = sorted({it.group for it in dataset.items if it.split == "train"})
    if len(groups) < 2:
        raise DataError(
            f"{dataset.name}: no val split, and train has only {len(groups)} group(s), too "
            'few to carve one from; add lines with "split": "val"'
        )
    val = {g for g in groups if seeded_split(g, seed, (1.0 - fraction, fraction)) == "val"}
    if not val or len(val) == len(groups):  # tiny datasets: at least one group each side
        by_unit = sorted(groups, key=lambda g: group_unit(g, seed))
        val = {by_unit[-1]} if not val else set(by_unit[1:])
    items = [replace(it, split="val") if it.group in val else it for it in dataset.items]
    moved = [it for it in items if it.split == "val"]
    note = {
        "carved_from": "train",
        "fraction": fraction,
        "seed": seed,
        "groups": len(val),
        "images": len(moved),
        "captions": sum(len(it.captions) for it in moved),
    }
    if report is not None:
        n_train = sum(it.split == "train" for it in dataset.items)
        share = note["images"] / n_train
        report(
            f"{dataset.name} has no val split: carved {note['images']} of {n_train} train "
            f"images ({share:.0%}; {note['captions']} captions, {len(val)} of {len(groups)} "
            f"groups, seed {seed}) out of train for validation "
            "(spec option val=strict refuses instead)"
        )
        if not fraction / 2 <= share <= fraction * 2:
            # the carve takes whole groups, each with probability `fraction`: with few
            # groups (or groups of unequal size) the share is far from the one asked for
            warnings.warn(
                f"that is {share:.0%} of train, not the {fraction:.0%} asked for: the "
                f"carve takes whole groups, and {len(groups)} groups make it coarse; give "
                'some lines "split": "val" to choose the val split, or val=FRACTION',
                stacklevel=2,
            )
    return replace(
        dataset,
        items=items,
        fingerprint=digest(dataset.fingerprint, "val-carved", str(fraction), str(seed)),
        notes={**dataset.notes, "val": note},
    )


# what a caption-less gallery (``folder:PATH``) is for, where a command needs captions
NO_CAPTIONS = (
    "this data has images and no captions, all in the test split: it can be indexed "
    "(picoalign index RUN --data SPEC, with --split all or test) and searched by text; "
    "training and evaluation need captions"
)


def require_splits(
    dataset: ImageCaptionDataset, splits: Sequence[str], spec: str, *, strict: bool = False
) -> None:
    """DataError (before any work) for each needed split that has no items."""
    counts = {s: sum(it.split == s for it in dataset.items) for s in SPLITS}
    for split in splits:
        if split == "all" or counts.get(split, 0):
            continue
        have = ", ".join(f"{s} {n}" for s, n in counts.items() if n) or "none"
        hint = (
            "drop val=strict to carve one from train, or choose another split"
            if strict and split == "val"
            else "add items of that split, or choose another split"
        )
        if dataset.items and not any(it.captions for it in dataset.items):
            hint = NO_CAPTIONS
        raise DataError(f"--data {spec}: split {split!r} is empty (items: {have}); {hint}")


def report_to_stderr(message: str) -> None:
    """A ``report`` that keeps stdout for machine-readable output (``--json``)."""
    print(message, file=sys.stderr)
