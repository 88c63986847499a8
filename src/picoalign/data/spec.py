"""The one spelling of a dataset on the command line: ``NAME[:ARG[:ARG]][:KEY=VALUE...]``.

Every command (train, eval, bench, ``picoalign datasets``) goes through :func:`load_dataset`,
so a dataset added to :data:`REGISTRY` is available everywhere with its help text and its
"installed?" status, and a typo gets the same helpful error everywhere.

Arguments are separated by ``:``, so a path that contains ``:`` cannot be spelled here; call
the Python function (:mod:`picoalign.data.formats`) directly for such paths.

Options follow the positional arguments as ``KEY=VALUE`` (the arity is fixed, so a path with
``=`` in it is still a path). Options are part of the spelling on purpose: the spec is what a
run's ``config.yaml`` records and what ``evaluate``/``index`` reuse, so a run's split choices
travel with it. Every dataset takes ``val=`` (:data:`COMMON_OPTIONS`, applied by
:mod:`picoalign.data.check`); ``jsonl`` also takes ``default-split=train|seeded``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from picoalign.data import builtin, folder, formats, scenes
from picoalign.data.base import ImageCaptionDataset
from picoalign.data.precomp import FEATURE_SUFFIXES

Builder = Callable[[list[str], int, bool, dict[str, str]], ImageCaptionDataset]

# Options every dataset accepts (handled after loading, by ``data.check.prepare_dataset``).
COMMON_OPTIONS: dict[str, str] = {
    "val": "auto (default: carve 10% of train's groups when there is no val split), "
    "a fraction such as 0.2 (carve that much), or strict (the file's own splits only)",
}


@dataclass(frozen=True)
class DatasetEntry:
    """One registered dataset: how to spell it, build it, describe it and check it is there."""

    name: str
    args: tuple[str, ...]  # placeholder names of the ':'-separated arguments
    description: str
    build: Builder  # (args, seed, skip_bad, options) -> dataset
    installed: Callable[[], bool] = lambda: True
    install_hint: str = ""
    options: tuple[str, ...] = ()  # format-specific KEY=VALUE options (besides COMMON_OPTIONS)

    @property
    def spelling(self) -> str:
        return ":".join((self.name, *self.args))


def _path(s: str) -> Path:
    return Path(s).expanduser()


def _emoji_styles_installed() -> bool:
    """``cross:`` needs both emoji styles: they are the only built-in pair with shared
    concepts (Tux Paint's stamps share none with them)."""
    return builtin.twemoji_installed() and builtin.noto_installed()


REGISTRY: dict[str, DatasetEntry] = {
    e.name: e
    for e in (
        DatasetEntry(
            "twemoji",
            (),
            "Twemoji 72x72 emoji, CLDR names as captions (1,918 pairs; CC-BY 4.0)",
            lambda a, seed, skip, opts: builtin.twemoji(seed=seed),
            builtin.twemoji_installed,
            builtin.TWEMOJI_HINT,
        ),
        DatasetEntry(
            "noto-emoji",
            (),
            "Noto Color Emoji rendered (~1,400 single-code-point emoji; OFL-1.1)",
            lambda a, seed, skip, opts: builtin.noto_emoji(seed=seed),
            builtin.noto_installed,
            builtin.NOTO_HINT,
        ),
        DatasetEntry(
            "tuxpaint",
            (),
            "Tux Paint stamps: photos and drawings, one English sentence each (~1,044; GPL-2)",
            lambda a, seed, skip, opts: builtin.tuxpaint(seed=seed),
            builtin.tuxpaint_installed,
            builtin.TUXPAINT_HINT,
        ),
        DatasetEntry(
            "cross",
            ("TRAIN", "TEST"),
            "train/val from built-in style TRAIN, test from style TEST, shared concepts only: "
            "twemoji and noto-emoji (e.g. cross:twemoji:noto-emoji; Tux Paint shares none)",
            lambda a, seed, skip, opts: builtin.cross_style(a[0], a[1], seed=seed),
            _emoji_styles_installed,
            f"both emoji styles: {builtin.TWEMOJI_HINT}; {builtin.NOTO_HINT}",
        ),
        DatasetEntry(
            "scenes",
            ("PROTOCOL",),
            "compositional scenes of 2-4 Twemoji/Noto objects, 5 captions each, look-alike "
            "siblings; PROTOCOL: twemoji, noto, style (Twemoji->Noto), caption (held-back "
            "phrasing), both, unseen (test concepts unseen); options size=N (7000), seed=S, "
            "held=list|relations|counts|tags, concepts=shared|unseen; the data seed is seed=S "
            "only, not --seed (docs/scenes.md)",
            lambda a, seed, skip, opts: scenes.from_spec(
                [a[0], *(f"{k}={v}" for k, v in opts.items() if k not in COMMON_OPTIONS)]
            ),
            builtin.twemoji_installed,
            builtin.TWEMOJI_HINT + "; Noto protocols also: " + builtin.NOTO_HINT,
            options=("size", "seed", "held", "concepts"),
        ),
        DatasetEntry(
            "jsonl",
            ("PATH",),
            'your data: one {"image": ..., "captions": [...], "split": ...} per line '
            "(default-split=train|seeded: the split of lines without one)",
            lambda a, seed, skip, opts: formats.jsonl(
                _path(a[0]), seed=seed, skip_bad=skip, default_split=opts.get("default-split")
            ),
            options=("default-split",),
        ),
        DatasetEntry(
            "karpathy",
            ("JSON", "IMAGE_ROOT"),
            "Karpathy split JSON (dataset_flickr30k.json, dataset_coco.json) + image folder",
            lambda a, seed, skip, opts: formats.karpathy(_path(a[0]), _path(a[1]), skip_bad=skip),
        ),
        DatasetEntry(
            "laps",
            ("DIR", "IMAGE_ROOT"),
            "LAPS / VSE-infinity layout: DIR/precomp/{split}_{ids,caps}.txt, id_mapping.json",
            lambda a, seed, skip, opts: formats.laps(_path(a[0]), _path(a[1]), skip_bad=skip),
        ),
        DatasetEntry(
            "folder",
            ("PATH",),
            "a gallery: every image file under PATH, no captions (for index and search "
            "only; sub-folders included, other files passed over)",
            lambda a, seed, skip, opts: folder.image_folder(_path(a[0]), skip_bad=skip),
        ),
        DatasetEntry(
            "precomp",
            ("DIR",),
            "precomputed image features (SCAN/VSE): {split}_ims.npy|.safetensors + _caps.txt",
            lambda a, seed, skip, opts: formats.precomp(_path(a[0]), skip_bad=skip),
        ),
    )
}


def parse_spec(spec: str) -> tuple[DatasetEntry, list[str]]:
    """Split ``spec`` into its registry entry and positional arguments, or raise ValueError
    that shows the known names or the expected spelling (options: :func:`spec_options`)."""
    entry, args, _ = parse_spec_options(spec)
    return entry, args


def spec_options(spec: str) -> dict[str, str]:
    """The ``KEY=VALUE`` options of ``spec`` (validated)."""
    return parse_spec_options(spec)[2]


def _format_hint(name: str, spec: str) -> str:
    """A guess at the format of a bare path given as ``--data``, said with the unknown name."""
    low = name.lower()
    path = Path(spec).expanduser()
    looks_like_path = "/" in name or "\\" in name or low.endswith((".json", ".jsonl"))
    if looks_like_path and not path.exists():
        return f" (and there is no file or folder {spec} either)"
    if low.endswith(".jsonl"):
        return f" (a file of your own? say its format: jsonl:{spec})"
    if low.endswith(".json"):
        return (
            f" (a file of your own? say its format: karpathy:{spec}:IMAGE_ROOT for a Karpathy "
            f"split file such as dataset_flickr30k.json, jsonl:{spec} for one JSON object a line)"
        )
    if path.is_dir():
        precomputed = any(
            next(d.glob(f"*{suffix}"), None) is not None
            for d in (path, path / "precomp")
            for suffix in FEATURE_SUFFIXES
        )
        if precomputed:
            return f" (a folder of your own? say its format: precomp:{spec})"
        return f" (a folder of your own? folder:{spec} is a gallery of its images, to index)"
    if looks_like_path:  # a file that is there, of no suffix said above
        return f" (a file of your own? say its format: jsonl:{spec})"
    return ""


def parse_spec_options(spec: str) -> tuple[DatasetEntry, list[str], dict[str, str]]:
    """``(entry, positional arguments, options)`` of ``spec``; ValueError on any misspelling."""
    name, *parts = spec.strip().split(":")
    entry = REGISTRY.get(name)
    if entry is None:
        known = ", ".join(e.spelling for e in REGISTRY.values())
        raise ValueError(
            f"unknown dataset {name!r}{_format_hint(name, spec.strip())}; known: {known}"
        )
    parts = _rejoin_paths(entry, parts)
    args, rest = parts[: len(entry.args)], parts[len(entry.args) :]
    # a surplus part without "=" is a surplus argument (arity error), not a bad option
    if len(args) != len(entry.args) or not all(args) or any("=" not in r for r in rest):
        n = sum(1 for p in parts if p) - sum("=" in r for r in rest)  # non-empty ones
        paths = set(entry.args) <= PATH_ARGS and n > len(entry.args)
        raise ValueError(
            f"dataset {spec!r} must be spelled {entry.spelling!r} "
            f"({len(entry.args)} non-empty ':'-separated argument(s), got {n})"
            + ("; a path with ':' in it is read whole only where it exists" if paths else "")
        )
    allowed = (*COMMON_OPTIONS, *entry.options)
    options: dict[str, str] = {}
    for part in rest:
        key, eq, value = part.partition("=")
        if not eq or key not in allowed or not value:
            raise ValueError(
                f"dataset {spec!r}: {part!r} is not an option of {name} "
                f"(expected KEY=VALUE after {entry.spelling!r}, KEY one of {', '.join(allowed)})"
            )
        options[key] = value
    return entry, args, options


PATH_ARGS = {"PATH", "DIR", "JSON", "IMAGE_ROOT"}


def _rejoin_paths(entry: DatasetEntry, parts: list[str]) -> list[str]:
    """``parts`` with paths that hold ':' put back together (``jsonl:run:2/d.jsonl``, a
    Windows drive ``jsonl:C:\\d.jsonl``), where the whole path exists; else as they were.

    Only for entries whose arguments are all paths; options (``KEY=VALUE``) stay last."""
    n = len(entry.args)
    if not n or not set(entry.args) <= PATH_ARGS:
        return parts
    k = len(parts)
    while k > 0 and "=" in parts[k - 1]:
        k -= 1
    positional, options = parts[:k], parts[k:]
    if len(positional) <= n:
        return parts

    def exists(p: str) -> bool:
        return bool(p) and Path(p).expanduser().exists()

    if n == 1:
        whole = ":".join(positional)
        return [whole, *options] if exists(whole) else parts
    for i in range(1, len(positional)):  # two paths: the first split where both exist
        a, b = ":".join(positional[:i]), ":".join(positional[i:])
        if exists(a) and exists(b):
            return [a, b, *options]
    return parts


def load_dataset(spec: str, *, seed: int = 0, skip_bad: bool = False) -> ImageCaptionDataset:
    """Build the dataset named by ``spec`` (see :data:`REGISTRY` / :func:`list_datasets`).

    ``seed`` drives the concept-level split of datasets without their own splits;
    ``skip_bad`` applies to file formats (built-in datasets are never partially bad).
    Common options (``val=``) are applied by :func:`picoalign.data.check.prepare_dataset`,
    the entry point of the CLI; this function builds the dataset as its files say.
    """
    entry, args, options = parse_spec_options(spec)
    return entry.build(args, seed, skip_bad, options)


def reads_user_files(spec: str) -> bool:
    """Whether ``spec`` names the user's own files (``folder:``, ``jsonl:`` …), not a
    built-in dataset: the feature cache takes rows from other files for those only
    (``features.reuse``), so a built-in dataset's features stay one encode."""
    entry, _ = parse_spec(spec)
    return bool(set(entry.args) & PATH_ARGS)


def specs_help(width: int = 100) -> str:
    """The ``--data`` spellings and their descriptions, for a command's ``--help``: made from
    :data:`REGISTRY`, so a dataset added there is listed with no second list to keep."""
    import textwrap

    lines = ["data specs (--data):"]
    for e in REGISTRY.values():
        text = textwrap.wrap(e.description, width - 31)
        lines.append(f"  {e.spelling:<28} {text[0]}")
        lines += [" " * 31 + more for more in text[1:]]
    lines += textwrap.wrap(
        "options after the arguments: SPEC:val=auto|0.2|strict (carve a missing val split "
        "from train, or refuse); docs/data.md",
        width,
        initial_indent="  ",
        subsequent_indent="  ",
    )
    return "\n".join(lines) + "\n"


def list_datasets() -> list[tuple[str, str, bool]]:
    """``(spelling, description, installed)`` per registered dataset, for ``picoalign
    datasets``. File formats are always "installed"; see ``REGISTRY[name].install_hint``."""
    return [(e.spelling, e.description, bool(e.installed())) for e in REGISTRY.values()]
