"""``picoalign cache``: what the feature cache holds, how large it is, and clearing it."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any


def add_cache(sub: Any) -> None:
    p = sub.add_parser(
        "cache",
        help="list the feature cache (size, datasets, encoders) or clear it",
        description="The frozen encoders' features are cached per (dataset content, encoder) "
        "in $PICOALIGN_CACHE (default ~/.cache/picoalign). List what is there, newest first, "
        "or remove it: only the files the cache writes are ever touched.",
    )
    p.add_argument(
        "--dir", help="the cache folder (default: $PICOALIGN_CACHE or ~/.cache/picoalign)"
    )
    p.add_argument("--clear", action="store_true", help="remove the cached features")
    p.add_argument(
        "--older-than",
        type=float,
        metavar="DAYS",
        help="with --clear: only features last written more than DAYS days ago",
    )
    p.set_defaults(func=cmd_cache)


def cmd_cache(args: argparse.Namespace) -> int:
    from picoalign.features.cache import cache_entries, human_bytes, older_than, remove_entries
    from picoalign.features.encode import default_cache_dir

    if args.older_than is not None and not args.clear:
        raise ValueError("--older-than selects what --clear removes: give --clear too")
    if args.older_than is not None and not args.older_than >= 0:
        raise ValueError(f"--older-than must be a number of days >= 0, got {args.older_than}")
    root = Path(args.dir).expanduser() if args.dir else default_cache_dir()
    if args.dir and not root.is_dir():  # a typo would look like an empty cache
        what = "a file, not a folder" if root.exists() else "no such folder"
        raise ValueError(f"--dir {args.dir}: {what}")
    if args.dir and root.name == "features" and not (root / "features").is_dir():
        raise ValueError(f"--dir {args.dir}: give the cache folder, the one that holds features/")
    entries = cache_entries(root)
    if args.clear:
        chosen = entries if args.older_than is None else older_than(entries, args.older_than)
        freed = remove_entries(chosen)
        kept = len(entries) - len(chosen)
        print(
            f"removed {len(chosen)} cached feature file{'s' if len(chosen) != 1 else ''} "
            f"({human_bytes(freed)}) from {root}" + (f"; {kept} kept" if kept else "")
        )
        return 0
    total = sum(e.bytes for e in entries)
    print(f"feature cache {root}: {len(entries)} files, {human_bytes(total)}")
    if not entries:
        return 0
    rows = [
        (
            time.strftime("%Y-%m-%d %H:%M", time.localtime(e.mtime)),
            human_bytes(e.bytes),
            e.kind,
            "unfinished" if e.unfinished else str(e.count),
            e.encoder,
            e.dataset,
        )
        for e in entries
    ]
    head = ("written", "size", "kind", "items", "encoder", "dataset")
    widths = [max(len(r[i]) for r in (head, *rows)) for i in range(len(head))]
    for r in (head, *rows):
        cells = zip(r, widths, strict=True)
        line = "  ".join(
            c.rjust(w) if i in (1, 3) else c.ljust(w) for i, (c, w) in enumerate(cells)
        )
        print(line.rstrip())
    print("\nremove with: picoalign cache --clear [--older-than DAYS]")
    return 0
