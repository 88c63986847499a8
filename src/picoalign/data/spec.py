"""The one spelling of a dataset on the command line: ``NAME[:ARG[:ARG]]``.

Every command (train, eval, bench, ``picoalign datasets``) goes through :func:`load_dataset`,
so a dataset added to :data:`REGISTRY` is available everywhere with its help text and its
"installed?" status, and a typo gets the same helpful error everywhere.

Arguments are separated by ``:``, so a path that contains ``:`` cannot be spelled here; call
the Python function (:mod:`picoalign.data.formats`) directly for such paths.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from picoalign.data import builtin, formats, scenes
from picoalign.data.base import ImageCaptionDataset

Builder = Callable[[list[str], int, bool], ImageCaptionDataset]


@dataclass(frozen=True)
class DatasetEntry:
    """One registered dataset: how to spell it, build it, describe it and check it is there."""

    name: str
    args: tuple[str, ...]  # placeholder names of the ':'-separated arguments
    description: str
    build: Builder  # (args, seed, skip_bad) -> dataset
    installed: Callable[[], bool] = lambda: True
    install_hint: str = ""
    # Shown after the required arguments, e.g. "[:size=N]": any number of further
    # non-empty arguments is then accepted and the builder validates them.
    options: str = ""

    @property
    def spelling(self) -> str:
        return ":".join((self.name, *self.args)) + self.options


def _path(s: str) -> Path:
    return Path(s).expanduser()


def _installed_pair() -> bool:
    checks = (builtin.twemoji_installed, builtin.noto_installed, builtin.tuxpaint_installed)
    return sum(check() for check in checks) >= 2


REGISTRY: dict[str, DatasetEntry] = {
    e.name: e
    for e in (
        DatasetEntry(
            "twemoji",
            (),
            "Twemoji 72x72 emoji, CLDR names as captions (1,918 pairs; CC-BY 4.0)",
            lambda a, seed, skip: builtin.twemoji(seed=seed),
            builtin.twemoji_installed,
            builtin.TWEMOJI_HINT,
        ),
        DatasetEntry(
            "noto-emoji",
            (),
            "Noto Color Emoji rendered (~1,400 single-code-point emoji; OFL-1.1)",
            lambda a, seed, skip: builtin.noto_emoji(seed=seed),
            builtin.noto_installed,
            builtin.NOTO_HINT,
        ),
        DatasetEntry(
            "tuxpaint",
            (),
            "Tux Paint stamps: photos and drawings, one English sentence each (~1,044; GPL-2)",
            lambda a, seed, skip: builtin.tuxpaint(seed=seed),
            builtin.tuxpaint_installed,
            builtin.TUXPAINT_HINT,
        ),
        DatasetEntry(
            "cross",
            ("TRAIN", "TEST"),
            "train/val from built-in style TRAIN, test from style TEST, shared concepts only "
            "(e.g. cross:twemoji:noto-emoji)",
            lambda a, seed, skip: builtin.cross_style(a[0], a[1], seed=seed),
            _installed_pair,
            "install two of the built-in datasets",
        ),
        DatasetEntry(
            "scenes",
            ("PROTOCOL",),
            "compositional scenes of 2-4 Twemoji/Noto objects, 5 captions each, look-alike "
            "siblings; PROTOCOL: twemoji, noto, style (Twemoji->Noto), caption (held-back "
            "phrasing), both, unseen (test concepts unseen); options size=N (7000), seed=S, "
            "held=list|relations|counts|tags, concepts=shared|unseen; the data seed is seed=S "
            "only, not --seed (docs/scenes.md)",
            lambda a, seed, skip: scenes.from_spec(a),
            builtin.twemoji_installed,
            builtin.TWEMOJI_HINT + "; Noto protocols also: " + builtin.NOTO_HINT,
            options="[:KEY=VALUE...]",
        ),
        DatasetEntry(
            "jsonl",
            ("PATH",),
            'your data: one {"image": ..., "captions": [...], "split"?: ...} per line',
            lambda a, seed, skip: formats.jsonl(_path(a[0]), seed=seed, skip_bad=skip),
        ),
        DatasetEntry(
            "karpathy",
            ("JSON", "IMAGE_ROOT"),
            "Karpathy split JSON (dataset_flickr30k.json, dataset_coco.json) + image folder",
            lambda a, seed, skip: formats.karpathy(_path(a[0]), _path(a[1]), skip_bad=skip),
        ),
        DatasetEntry(
            "laps",
            ("DIR", "IMAGE_ROOT"),
            "LAPS / VSE-infinity layout: DIR/precomp/{split}_{ids,caps}.txt, id_mapping.json",
            lambda a, seed, skip: formats.laps(_path(a[0]), _path(a[1]), skip_bad=skip),
        ),
        DatasetEntry(
            "precomp",
            ("DIR",),
            "precomputed image features (SCAN/VSE): {split}_ims.npy|.safetensors + _caps.txt",
            lambda a, seed, skip: formats.precomp(_path(a[0]), skip_bad=skip),
        ),
    )
}


def parse_spec(spec: str) -> tuple[DatasetEntry, list[str]]:
    """Split ``spec`` into its registry entry and arguments, or raise ValueError that shows
    the known names or the expected spelling."""
    name, *args = spec.strip().split(":")
    entry = REGISTRY.get(name)
    if entry is None:
        known = ", ".join(e.spelling for e in REGISTRY.values())
        raise ValueError(f"unknown dataset {name!r}; known: {known}")
    n = len(entry.args)
    if (len(args) < n if entry.options else len(args) != n) or any(not a for a in args):
        raise ValueError(
            f"dataset {spec!r} must be spelled {entry.spelling!r} "
            f"({n}{'+' if entry.options else ''} non-empty ':'-separated argument(s), "
            f"got {len(args)})"
        )
    return entry, args


def load_dataset(spec: str, *, seed: int = 0, skip_bad: bool = False) -> ImageCaptionDataset:
    """Build the dataset named by ``spec`` (see :data:`REGISTRY` / :func:`list_datasets`).

    ``seed`` drives the concept-level split of datasets without their own splits;
    ``skip_bad`` applies to file formats (built-in datasets are never partially bad).
    """
    entry, args = parse_spec(spec)
    return entry.build(args, seed, skip_bad)


def list_datasets() -> list[tuple[str, str, bool]]:
    """``(spelling, description, installed)`` per registered dataset, for ``picoalign
    datasets``. File formats are always "installed"; see ``REGISTRY[name].install_hint``."""
    return [(e.spelling, e.description, bool(e.installed())) for e in REGISTRY.values()]
