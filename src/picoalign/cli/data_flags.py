"""The flags shared by ``train``, ``evaluate`` and ``index`` (data options, the checkpoint),
defined once so the commands spell and document them identically (``docs/data.md``)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any


def positive_int(text: str) -> int:
    """An integer >= 1 (``--top-k``, ``--nprobe``, the integer form of ``--epochs``)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def pixel_count(text: str) -> int:
    """A positive pixel count: ``200000000``, ``2e8`` or ``200M``."""
    raw = text.strip().upper().replace("_", "")
    scale = 1_000_000 if raw.endswith("M") else 1
    try:
        value = float(raw.removesuffix("M")) * scale
    except ValueError:
        value = -1.0
    if not value >= 1 or value != int(value):
        raise argparse.ArgumentTypeError(
            f"expected a positive pixel count (e.g. 200M), got {text!r}"
        )
    return int(value)


def add_data_flags(p: argparse.ArgumentParser, *, skip_bad: bool = True) -> None:
    """``--skip-bad`` (unless the parser has it) and ``--max-image-pixels``; both default to
    None so that ``train`` can tell "not given" from a value (config file precedence)."""
    if skip_bad:
        p.add_argument(
            "--skip-bad",
            action="store_true",
            dest="skip_bad",
            default=None,
            help="drop bad data entries (all listed) instead of stopping",
        )
    p.add_argument(
        "--max-image-pixels",
        type=pixel_count,
        dest="max_image_pixels",
        default=None,
        metavar="N",
        help="refuse images with more pixels (e.g. 300M); default: Pillow's decompression-"
        "bomb limit (179M); large images are decoded downscaled",
    )


def data_kwargs(args: Any, *, runs_data: bool = False) -> dict[str, Any]:
    """The ``dataset_features`` keywords of the data flags. On the data a run trained on,
    taken from the run because ``--data`` was not given (``runs_data``), a flag not given
    takes the run's value: a run trained with ``--skip-bad`` or a raised
    ``--max-image-pixels`` is evaluated and indexed on the same images, instead of stopping on
    the entries it skipped (or, with only one of the two repeated, quietly scoring other
    data). An explicit ``--data`` is read as given, with the flags given."""
    own = (run_config(args.checkpoint) or {}) if runs_data else {}
    skip_bad = getattr(args, "skip_bad", None)
    pixels = getattr(args, "max_image_pixels", None)
    return {
        "skip_bad": bool(own.get("skip_bad", False) if skip_bad is None else skip_bad),
        "max_image_pixels": own.get("max_image_pixels") if pixels is None else pixels,
    }


CHECKPOINT_HELP = "run folder (uses best/) or model folder"


def add_folder_arg(p: argparse.ArgumentParser, name: str, help: str) -> None:
    """A required folder, given as ``NAME`` or ``--NAME NAME``: a user types ``picoalign
    evaluate runs/pico`` or ``picoalign search my-index --text ...`` first, and that should
    just work. :func:`resolve_folder_args` merges the two spellings after parsing."""
    p.add_argument(f"{name}_pos", nargs="?", metavar=name.upper(), help=help)
    p.add_argument(f"--{name}", default=None, help="the same, as a flag")
    p.set_defaults(_folder_args=[*(p.get_default("_folder_args") or []), (name, p)])


def add_checkpoint(p: argparse.ArgumentParser) -> None:
    add_folder_arg(p, "checkpoint", CHECKPOINT_HELP)


def resolve_folder_args(args: argparse.Namespace) -> None:
    """Each :func:`add_folder_arg` value from its positional or its flag (a parser error if
    neither, or two that differ); commands without one are left alone."""
    for name, p in getattr(args, "_folder_args", None) or []:
        pos, flag = getattr(args, f"{name}_pos"), getattr(args, name)
        if pos is not None and flag is not None and pos != flag:
            p.error(f"{name.upper()} given twice: {pos} and --{name} {flag}; give one")
        value = flag if flag is not None else pos
        if value is None:
            article = "an" if name[0] in "aeiou" else "a"
            p.error(f"{article} {name} is required: {name.upper()} or --{name} {name.upper()}")
        setattr(args, name, os.path.expanduser(value))
        delattr(args, f"{name}_pos")
    if hasattr(args, "_folder_args"):
        del args._folder_args


# the options that name a file or folder (a folder argument's two spellings: above)
PATH_OPTIONS = ("out", "config", "index", "checkpoint", "image", "sheet", "old", "new", "dir")


def expand_home(args: argparse.Namespace) -> None:
    """``~`` as the home folder in every path option. The shell expands it only at the start
    of a word: ``--sheet=~/s.png`` and a quoted ``"~/x"`` reach us as they are, and a sheet
    was drawn into a folder named ``~`` in the current one (which ``rm -rf ~`` then "cleans
    up"), while ``--index=~/idx`` was "not found"."""
    for name in PATH_OPTIONS:
        value = getattr(args, name, None)
        if isinstance(value, str):
            setattr(args, name, os.path.expanduser(value))
        elif isinstance(value, list):
            setattr(args, name, [os.path.expanduser(v) for v in value])


def add_split_seed(p: argparse.ArgumentParser) -> None:
    """``--split-seed`` (alias ``--seed``) of ``evaluate`` and ``index``: None unless given,
    so :func:`run_data` can fall back to the run's own."""
    p.add_argument(
        "--split-seed",
        "--seed",
        type=int,
        dest="seed",
        default=None,
        help="seed of the data's split, where the data leaves it to a seed (default: the "
        "run's split_seed, else 0); not a training seed: a split other than the run's may put "
        "training images in the scored split. --seed is an older spelling of it",
    )


def run_folder(checkpoint: str) -> Path | None:
    """The training run a checkpoint belongs to: the folder itself, or the run a model
    folder (``RUN/best``) sits in; None for a model saved outside a run."""
    for folder in (Path(checkpoint), Path(checkpoint).parent):
        if (folder / "config.yaml").is_file():
            return folder
    return None


def run_config(checkpoint: str) -> dict[str, Any] | None:
    """The training config.yaml of a run folder (or of the run a model folder sits in)."""
    import yaml

    folder = run_folder(checkpoint)
    return None if folder is None else yaml.safe_load((folder / "config.yaml").read_text()) or {}


def changed_data_warning(checkpoint: str, data: str, seed: int, meta: dict[str, Any]) -> str | None:
    """A warning when ``data`` is the run's own dataset (same spec, same split seed) but its
    items changed since the run trained on it (``data.json``'s items fingerprint, the one
    ``--resume`` refuses on): its test split may then hold items the model trained on, and
    R@K would say nothing of it; or its image files changed on disk, as ``--resume`` warns."""
    from picoalign.config.paths import absolute_spec
    from picoalign.training.runs import data_change, data_record

    run = run_config(checkpoint)
    if run is None or absolute_spec(str(run.get("data", ""))) != absolute_spec(data):
        return None
    if int(run.get("split_seed", 0)) != seed:
        return None
    folder = run_folder(checkpoint)
    record = data_record(folder)
    change = data_change(record, meta)
    if change is None or record.get("items_fingerprint") is None:  # older runs: not checked
        return None
    kind, before, now = change
    if kind == "files":  # the same items; the files themselves, as --resume checks them
        return (
            f"warning: the same images and captions as {folder} trained on, but image files "
            "changed on disk since (size, time or inode: edited, replaced, renamed or copied; "
            f"fingerprint {before} in "
            f"{folder / 'data.json'}, {now} now)"
        )
    return (
        f"warning: {data} changed since {folder} trained on it (its images, splits or "
        f"captions: fingerprint {before} in {folder / 'data.json'}, {now} now): its splits "
        "may not be the ones it trained on, so a test split may hold training images"
    )


def changed_encoder_warning(checkpoint: str, meta: dict[str, Any]) -> str | None:
    """A warning when a frozen backbone is not the one the run trained on: its settings or
    weights (an ``hf:`` folder saved again, a tokenizer edited) differ from those in the
    run's ``data.json``. The heads were trained on the old features; R@K then measures
    a model that never existed. Library versions are not compared (an upgrade of torch
    rounds otherwise, it does not change the encoder)."""
    from picoalign.training.runs import data_record

    folder = run_folder(checkpoint)
    if folder is None:
        return None
    trained = data_record(folder)
    changed = []
    for side in ("image", "text"):
        before, now = trained.get(f"{side}_cache_key"), meta.get(f"{side}_cache_key")
        both = isinstance(before, str) and isinstance(now, str)
        if both and before.rsplit("|", 1)[0] != now.rsplit("|", 1)[0]:
            changed.append(f"the {side} encoder {meta.get(f'{side}_encoder', '')}")
    if not changed:
        return None
    return (
        f"warning: {' and '.join(changed)} {'is' if len(changed) == 1 else 'are'} not the one"
        f"{'' if len(changed) == 1 else 's'} {folder} trained on (weights or settings changed "
        f"since, per {folder / 'data.json'}): the model's heads were trained on other features"
    )


def run_data(checkpoint: str, data: str | None, seed: int | None) -> tuple[str, int]:
    """The dataset spec and split seed ``evaluate`` and ``index`` read: the ones given, else
    the run's own (its ``data`` and ``split_seed``), so that ``--split test`` is the test split
    the model never trained on, not a split drawn with another seed."""
    run = run_config(checkpoint)
    if data is None and run is None:
        raise ValueError(f"--checkpoint {checkpoint}: no config.yaml found; pass --data")
    spec = data or str((run or {}).get("data", "twemoji"))
    return spec, seed if seed is not None else int((run or {}).get("split_seed", 0))
