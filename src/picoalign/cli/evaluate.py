"""``picoalign evaluate``: R@K both ways and rSum of a checkpoint on a dataset split, under
the field's protocol or a named benchmark's (docs/cli.md, "What evaluate reports")."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from picoalign.cli.data_flags import (
    add_checkpoint,
    add_data_flags,
    add_split_seed,
    changed_data_warning,
    changed_encoder_warning,
    data_kwargs,
    resolve_folder_args,
    run_data,
)
from picoalign.evaluation.protocols import PROTOCOLS


def add_evaluate(sub: Any, epilog: str) -> None:
    p = sub.add_parser(
        "evaluate",
        help="R@1/5/10 and rSum of a checkpoint on a dataset split",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_checkpoint(p)
    p.add_argument("--data", default=None, help="dataset spec (default: the one it trained on)")
    p.add_argument(
        "--split",
        default="test",
        choices=["train", "val", "test", "all"],
        help="the split to score",
    )
    p.add_argument(
        "--protocol",
        default="full",
        choices=list(PROTOCOLS),
        help="; ".join(f"{k}: {v}" for k, v in PROTOCOLS.items()),
    )
    p.add_argument(
        "--rule",
        choices=["plain", "weighted"],
        default=None,
        help="scoring rule: plain (p = 1) or weighted (PICO's weighting; PICO models only); "
        "default: the model's own",
    )
    p.add_argument("--json", action="store_true", help="print a machine-readable result")
    p.add_argument(
        "--no-progress",
        action="store_false",
        dest="progress",
        help="no progress bars (--json implies it)",
    )
    add_split_seed(p)
    p.add_argument(
        "--memory-mb",
        type=float,
        default=1024.0,
        dest="memory_mb",
        help="most MB of scores held at once; a larger matrix is scored in two blocked passes "
        "(COCO 5K x 25K needs 500; default 1024)",
    )
    add_data_flags(p)
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    resolve_folder_args(args)
    from picoalign.checkpoint import untrained_note
    from picoalign.data.check import report_to_stderr
    from picoalign.evaluation import (
        coarse_split_warning,
        duplicate_caption_warning,
        evaluate,
        format_table,
    )
    from picoalign.features import dataset_features
    from picoalign.model import PicoAligner

    model = PicoAligner.load(args.checkpoint)
    model.config.check_rule(args.rule)  # before any encoding: errors in seconds
    if (note := untrained_note(model, f"an evaluation of {args.checkpoint}")) is not None:
        print(f"picoalign: warning: {note}", file=sys.stderr)
    if not args.memory_mb > 0:
        raise ValueError(f"--memory-mb must be positive, got {args.memory_mb}")
    data, split_seed = run_data(args.checkpoint, args.data, args.seed)
    fs = dataset_features(
        data,
        model.config.image_encoder,
        model.config.make_text_encoder,  # built once the data is known to load
        trained_encoder=True,  # precomputed features need a model trained on them
        seed=split_seed,
        progress=args.progress and not args.json,
        need_splits=(args.split,),
        need_captions=True,  # a caption-less gallery is refused before it is encoded
        report=report_to_stderr if args.json else print,
        check=lambda dataset: _check_protocol_size(args.protocol, args.split, dataset, data),
        **data_kwargs(args, runs_data=args.data is None),
    )
    for changed in (
        changed_data_warning(args.checkpoint, data, split_seed, fs.meta),
        changed_encoder_warning(args.checkpoint, fs.meta),
    ):
        if changed is not None:
            print(f"picoalign: {changed}", file=sys.stderr)
    if args.split != "all":
        fs = fs.split(args.split)
    if fs.n_images == 0:
        raise ValueError(f"--data {data}: split {args.split!r} has no images")
    if fs.n_captions == 0:  # a split whose items have none (the whole data has some)
        from picoalign.data.check import NO_CAPTIONS

        raise ValueError(f"--data {data}: nothing to evaluate, {NO_CAPTIONS}")
    for warning in (
        coarse_split_warning(args.split, fs.n_images),
        duplicate_caption_warning(args.split, fs.captions, fs.caption_image.tolist()),
    ):
        if warning is not None:
            print(f"picoalign: {warning}", file=sys.stderr)
    metrics = evaluate(model, fs, args.protocol, args.rule, memory_mb=args.memory_mb)
    if metrics.get("captions_left_out"):
        print(
            f"picoalign: --protocol {args.protocol} scores the first 5 captions of each image, "
            f"as the field does: {metrics['captions_left_out']} later captions left out",
            file=sys.stderr,
        )
    c = model.config
    rule = args.rule or c.eval_rule
    if rule != "plain" and not model.pico.active:  # the scores are the plain ones: say so
        print(
            "picoalign: warning: PICO's p is still 1 in this model (its warm-up covered the "
            f"whole run), so the {rule} scores are the plain ones",
            file=sys.stderr,
        )
    metrics = {**metrics, "rule": rule}
    if args.json:
        print(json.dumps(_rounded(metrics)))
    else:
        protocol = "" if args.protocol == "full" else f"protocol {args.protocol}, "
        if args.protocol == "1k":
            protocol = "protocol 1k: mean of 5 folds, "
        label = f"{c.label} ({_short(data)}, {args.split}, {protocol}{rule} scores)"
        print(format_table({label: metrics}))
    return 0


def _check_protocol_size(protocol: str, split: str, dataset: Any, data: str) -> None:
    """A named protocol's image count, checked on the loaded data before it is encoded."""
    from picoalign.evaluation.protocols import protocol_size_problem

    n = sum(split == "all" or it.split == split for it in dataset.items)
    problem = protocol_size_problem(protocol, n)
    if problem:
        raise ValueError(f"--data {data}, split {split!r}: {problem}; use --protocol full")


def _short(spec: str, width: int = 40) -> str:
    """A data spec for a table's row label: paths cut to their last part when the spec is
    long (the table's first column was 160 characters of absolute path)."""
    if len(spec) <= width:
        return spec
    return ":".join(
        os.path.basename(p.rstrip("/")) or p if "/" in p else p for p in spec.split(":")
    )


def _rounded(value: Any, digits: int = 6) -> Any:
    """JSON-ready metrics with floats to ``digits`` decimals: 100 * 29 / 50 computed as a mean
    prints as 57.99999999999999, which a user's table or plot then carries."""
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, dict):
        return {k: _rounded(v, digits) for k, v in value.items()}
    if isinstance(value, list):  # the 1k protocol's folds
        return [_rounded(v, digits) for v in value]
    return value
