"""``picoalign index`` and ``picoalign search``: gallery retrieval from the command line.

``add_parsers(subparsers)`` is called by :func:`picoalign.cli.build_parser`; each sub-command
sets ``func(args) -> int``. User errors raise ``ValueError`` / ``FileNotFoundError`` with one
clear line (the main CLI prints ``picoalign: error: ...`` and exits 2).

    picoalign index --checkpoint runs/pico --data twemoji --out gallery/twemoji
    picoalign search --index gallery/twemoji --text "a red apple" --top-k 5 --sheet apple.png
    picoalign index --checkpoint runs/pico --data twemoji --kind captions --out gallery/caps
    picoalign search --index gallery/caps --image photo.png
    picoalign relocate gallery/twemoji /old/photos /new/photos   # the images moved
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from picoalign.cli.data_flags import (
    add_checkpoint,
    add_data_flags,
    add_folder_arg,
    add_split_seed,
    changed_data_warning,
    changed_encoder_warning,
    data_kwargs,
    positive_int,
    resolve_folder_args,
    run_data,
)
from picoalign.cli.hits import (
    format_hits,
    hit_rows,
    refuse_image_files,
    refuse_non_image_files,
    warn_stale_sources,
)
from picoalign.config.paths import real_path
from picoalign.data import DataError
from picoalign.fileio import folder_lock
from picoalign.retrieval.store import DTYPES, FIRST_STAGES, KINDS


def add_parsers(sub: Any) -> None:
    """Add the ``index``, ``search`` and ``relocate`` sub-commands to an argparse subparsers."""
    p = sub.add_parser(
        "index",
        help="embed a dataset once into a searchable gallery index",
        description="Embed a dataset's images (or captions, --kind captions) with a trained "
        "model and write a gallery index folder: token features, a FAISS first stage over "
        "pooled embeddings, and a manifest tying it to the model and the data.",
    )
    add_checkpoint(p)
    p.add_argument(
        "--data",
        default=None,
        help="dataset spec, e.g. twemoji or jsonl:PATH (default: the one it trained on)",
    )
    p.add_argument(
        "--split",
        default="all",
        choices=["train", "val", "test", "all"],
        help="which items form the gallery (default: all)",
    )
    p.add_argument("--out", required=True, help="index folder to write (a new or empty folder)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the index already at --out (never anything else)",
    )
    p.add_argument(
        "--kind",
        default="images",
        choices=KINDS,
        help="images: search by --text (default); captions: search by --image",
    )
    p.add_argument("--dtype", default="float16", choices=list(DTYPES), help="token storage")
    p.add_argument(
        "--first-stage",
        dest="first_stage",
        default="flat",
        choices=FIRST_STAGES,
        help="FAISS index over pooled embeddings: flat (exact), ivf, hnsw (default flat)",
    )
    p.add_argument("--nprobe", type=positive_int, help="IVF lists searched (default 32)")
    add_split_seed(p)
    add_data_flags(p)
    p.add_argument("--no-progress", action="store_false", dest="progress", help="no progress bars")
    p.set_defaults(func=cmd_index)

    s = sub.add_parser(
        "search",
        help="search a gallery index by text (image index) or by image (caption index)",
        description="Two-stage search: FAISS over pooled embeddings returns --candidates, the "
        "model's own scoring rule (its --scorer and --method) re-ranks them.",
    )
    add_folder_arg(s, "index", "index folder written by `picoalign index`")
    s.add_argument(
        "queries",
        nargs="*",
        metavar="QUERY",
        help="queries after INDEX, read by the index's kind: texts for an image index, image "
        "files for a caption index (--text / --image say it explicitly)",
    )
    q = s.add_mutually_exclusive_group()
    q.add_argument("--text", action="append", help="a text query (repeat for several)")
    q.add_argument("--image", action="append", help="an image query (caption index; repeatable)")
    s.add_argument(
        "-k", "--top-k", dest="top_k", type=positive_int, default=5, help="results per query"
    )
    s.add_argument("--candidates", type=positive_int, default=100, help="stage-1 candidates")
    s.add_argument("--no-rerank", action="store_false", dest="rerank", help="stage 1 only")
    s.add_argument("--exhaustive", action="store_true", help="fine-grained over all items")
    s.add_argument("--nprobe", type=positive_int, help="IVF lists searched (default: index's)")
    s.add_argument(
        "--checkpoint",
        help="where the index's model is now, if its checkpoint was moved (the same weights: "
        "another model is refused, since the index holds its features)",
    )
    s.add_argument(
        "--sheet",
        help="write a PNG contact sheet of the results (image index); replaces only an "
        "earlier sheet, never another file",
    )
    s.add_argument("--json", action="store_true", help="print machine-readable results")
    s.add_argument(
        "--no-verify",
        action="store_false",
        dest="verify",
        help="skip the check that the index's files are the ones it wrote (their sha256, "
        "about a second per 1.5 GB of index)",
    )
    s.set_defaults(func=cmd_search)
    r = sub.add_parser(
        "relocate",
        help="point an index at its gallery's new folder after the image files moved",
        description="The gallery's image files moved from folder OLD to folder NEW: rewrite "
        "the index's file paths and dataset spec under OLD to NEW, without encoding anything "
        "again (the features do not depend on where the files are). Refused, with the index "
        "unchanged, when nothing of it lies under OLD or none of the files is at NEW.",
    )
    r.add_argument("index", metavar="INDEX", help="the gallery index folder")
    r.add_argument("old", metavar="OLD", help="the folder the images were in when indexed")
    r.add_argument("new", metavar="NEW", help="the folder they are in now")
    r.set_defaults(func=cmd_relocate)


def cmd_relocate(args: argparse.Namespace) -> int:
    from picoalign.retrieval.relocate import relocate_index

    done = relocate_index(args.index, args.old, args.new)
    if done.missing:
        warnings.warn(
            f"{len(done.missing)} of the {done.moved} moved image files are not under "
            f"{args.new} (e.g. {done.missing[0]}); search still returns them, from the "
            "index's features",
            stacklevel=2,
        )
    spec = f"; dataset spec now {done.spec}" if done.spec_moved else ""
    what = "image paths" if done.kind == "images" else "captions' image paths"
    print(f"index {args.index}: {done.moved} {what} now under {args.new}{spec}")
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    resolve_folder_args(args)
    out = Path(real_path(args.out))  # through a link: the folder it points to
    with folder_lock(out, "writing an index into it"):  # one writer: the check holds
        return _index(args, out)


def _index(args: argparse.Namespace, out: Path) -> int:
    from picoalign.features import dataset_features
    from picoalign.model import PicoAligner
    from picoalign.retrieval.build import build_index
    from picoalign.retrieval.store import check_index_folder

    check_index_folder(out, overwrite=args.overwrite)  # before any work
    _ivf_only(args.nprobe, args.first_stage, "the index to build", " (give --first-stage ivf)")
    model = PicoAligner.load(args.checkpoint)
    kwargs = data_kwargs(args, runs_data=args.data is None)
    args.data, args.seed = run_data(args.checkpoint, args.data, args.seed)
    if args.kind == "captions" and args.data.partition(":")[0] == "folder":  # before any work
        raise ValueError(
            f"--kind captions: --data {args.data} is a gallery with no captions; index it "
            "as images (the default --kind) and search it by text"
        )
    fs = dataset_features(
        args.data,
        model.config.image_encoder,
        model.config.make_text_encoder,  # built once the data is known to load
        trained_encoder=True,  # precomputed features need a model trained on them
        seed=args.seed,
        progress=args.progress,
        need_splits=(args.split,),
        texts=args.kind == "captions",  # an image index needs no caption features
        **kwargs,
    )
    for changed in (
        changed_data_warning(args.checkpoint, args.data, args.seed, fs.meta),
        changed_encoder_warning(args.checkpoint, fs.meta),
    ):
        if changed is not None:
            warnings.warn(changed.removeprefix("warning: "), stacklevel=2)
    if args.split != "all":
        fs = fs.split(args.split)
    if fs.n_images == 0:
        raise ValueError(f"--data {args.data}: split {args.split!r} has no images")
    index = build_index(
        model,
        fs,
        dataset_spec=args.data,
        checkpoint=args.checkpoint,
        out=out,
        dtype=args.dtype,
        first_stage=args.first_stage,
        kind=args.kind,
        split=args.split,
        seed=args.seed,
        nprobe=args.nprobe,
        progress=args.progress,
        max_image_pixels=kwargs.get("max_image_pixels"),
        overwrite=args.overwrite,
    )
    size = sum(f.stat().st_size for f in out.iterdir()) / 2**20
    what = args.kind if index.n != 1 else args.kind[:-1]  # "1 image", "2 images"
    print(
        f"indexed {index.n} {what} of {args.data} ({args.split}) with "
        f"{'an' if args.first_stage == 'ivf' else 'a'} {args.first_stage} first stage: "
        f"{args.out} ({size:.1f} MiB)"
    )
    reused = fs.meta.get("image_reused", 0) if args.kind == "images" else 0
    if reused:  # with --no-progress nothing else says it
        what = "image" if reused == 1 else "images"
        print(f"features of {reused} {what} came from the feature cache, not encoded again")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    if args.index is not None and args.index_pos is not None:
        if Path(args.index_pos).resolve() == Path(args.index).resolve():
            args.index_pos = args.index  # ./idx and idx, or its absolute path: one index
        elif (Path(args.index_pos) / "manifest.json").is_file():  # an index, not a query
            raise ValueError(
                f"two indexes: {args.index_pos} and --index {args.index}; give one of them"
            )
        else:  # --index I QUERY: the first word is a query
            args.queries, args.index_pos = [args.index_pos, *args.queries], None
    resolve_folder_args(args)
    from picoalign.retrieval.sheet import check_sheet_path

    index = _index_and_queries(args)
    if args.exhaustive and not args.rerank:
        raise ValueError(
            "--exhaustive scores every item fine-grained; --no-rerank keeps stage 1 "
            "only: give one of them"
        )
    stage = (index.manifest.get("first_stage") or {}).get("type")
    _ivf_only(args.nprobe, stage, f"index {args.index}")
    if args.sheet and index.kind != "images":
        raise ValueError("--sheet draws retrieved images: it needs an image index")
    replacing = False
    if args.sheet:
        check_sheet_path(args.sheet)  # before the search: never over a user's own file
        replacing = Path(args.sheet).exists()  # an earlier sheet: said when replaced
    model = index.load_model()
    if args.top_k > index.n:  # said, so that 45 results for -k 1000 are not a surprise
        items = f"{index.n} item{'' if index.n == 1 else 's'}"
        print(f"picoalign: -k {args.top_k}: the index holds {items}: at most {index.n} "
              f"result{'' if index.n == 1 else 's'} per query", file=sys.stderr)  # fmt: skip
    kw = {
        "k": args.top_k,
        "candidates": args.candidates,
        "rerank": args.rerank,
        "exhaustive": args.exhaustive,
        "nprobe": args.nprobe,
    }
    queries = args.text or args.image
    if args.text:
        hits = index.search_text(model, args.text, **kw)
    else:
        hits = index.search_image(model, args.image, **kw)
    _print_hits(args, hits, queries, index, stage)
    if args.sheet:  # after the results: a sheet that cannot be drawn does not lose them
        _draw_sheet(args, hits, queries, index, replacing)
    return 0


def _index_and_queries(args: argparse.Namespace) -> Any:
    """The index, and the queries put where its kind reads them: texts (``args.text``) for
    an image index, image files (``args.image``) for a caption index; refused first if none
    or both ways are given."""
    from picoalign.retrieval.index import GalleryIndex

    if args.queries and (args.text or args.image):
        raise ValueError("give the queries after INDEX or with --text / --image, not both")
    if not (args.queries or args.text or args.image):
        raise ValueError(
            "no query: picoalign search INDEX QUERY... (texts for an image index, image files "
            "for a caption index), or --text / --image"
        )
    index = GalleryIndex.load(args.index, checkpoint=args.checkpoint, verify=args.verify)
    if args.queries:  # an image index is searched by text, a caption index by image
        if index.kind == "images":
            refuse_image_files(args.queries)
        args.text, args.image = (
            (args.queries, None)
            if index.kind == "images"
            else (None, [os.path.expanduser(q) for q in args.queries])  # files: as --image
        )
    if args.image and index.kind == "captions":
        refuse_non_image_files(args.image, args.index)
    return index


def _print_hits(
    args: argparse.Namespace, hits: list, queries: list[str], index: Any, stage: str | None
) -> None:
    """The results (a table per query, or ``--json``), then the warnings about them: files
    changed since indexing, fewer results than asked."""
    if args.json:
        print(json.dumps(hit_rows(hits, queries, index, args.rerank), indent=2))
    else:
        for i, (qry, hs) in enumerate(zip(queries, hits, strict=True)):
            shown = qry if len(qry) <= 120 else f"{qry[:117]}…"  # whole in --json
            print(("\n" if i else "") + f"query: {shown}")
            print(format_hits(hs))
    warn_stale_sources(hits, index, args.index)
    short = [i for i, hs in enumerate(hits, 1) if len(hs) < min(args.top_k, index.n)]
    if short and not args.exhaustive:
        n = len(hits[short[0] - 1])
        warnings.warn(
            f"query {short[0]}{' and others' if len(short) > 1 else ''}: {n} results, not "
            f"{args.top_k}: the {stage} first stage reached only {n} items"
            + (" (a larger --nprobe probes more lists)" if stage == "ivf" else ""),
            stacklevel=3,
        )


def _draw_sheet(
    args: argparse.Namespace, hits: list, queries: list[str], index: Any, replacing: bool
) -> None:
    """``--sheet``: the retrieved images in one PNG; a gallery that moved is said, with the
    results already printed."""
    from picoalign.retrieval.index import contact_sheet

    mode = "exhaustive" if args.exhaustive else "two-stage" if args.rerank else "stage 1"
    try:
        contact_sheet(
            hits,
            index.image_loader(),
            args.sheet,
            title=f"top-{args.top_k} ({mode}) — {Path(args.index).name}",
            row_labels=queries,
        )
    except (FileNotFoundError, DataError) as e:
        raise ValueError(
            f"--sheet {args.sheet}: not drawn, the images of index {args.index} cannot be "
            f"read ({e}); were they moved since it was indexed? (the results are above)"
        ) from e
    if not args.json:
        print(f"\ncontact sheet: {args.sheet}"
              + (" (it replaces the earlier sheet there)" if replacing else ""))  # fmt: skip


def _ivf_only(nprobe: int | None, stage: str | None, what: str, hint: str = "") -> None:
    """``--nprobe`` is refused where it would be ignored, by ``index`` and ``search`` alike."""
    if nprobe is not None and stage != "ivf":
        raise ValueError(
            f"--nprobe: {what} has a {stage} first stage; --nprobe applies to an ivf first "
            f"stage, not {stage}{hint}"
        )
