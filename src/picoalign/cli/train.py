"""``picoalign train``: one run folder per run, never lost.

Why its own module: the command decides what a run folder may become — a new run, the same
run continued (``--resume``, on the run's own ``config.yaml``), or a replaced one
(``--overwrite``) — and that policy must be visible in one place, with its messages.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Any

from picoalign.cli.data_flags import add_data_flags, positive_int
from picoalign.cli.progress import epoch_line
from picoalign.core.scorers import list_scorers

# what a resumed run may change: how long, how often it saves/evaluates and how it reports;
# everything else (data, model, optimiser, seed, ...) would make it another run
RESUMABLE = frozenset(
    {"epochs", "progress", "save_every_steps", "eval_every", "device", "cache_dir", "out"}
)

# dotted option -> the flag that sets it (for messages that name what the user typed)
FLAGS = {
    "data": "--data",
    "model.method": "--method",
    "model.scorer": "--scorer",
    "out": "--out",
    "epochs": "--epochs",
    "seed": "--seed",
    "split_seed": "--split-seed",
    "batch_size": "--batch-size",
    "lr": "--lr",
    "margin": "--margin",
    "loss": "--loss",
    "model.image_encoder": "--image-encoder",
    "model.text_encoder": "--text-encoder",
    "device": "--device",
    "skip_bad": "--skip-bad",
    "max_image_pixels": "--max-image-pixels",
    "progress": "--no-progress",
}


def epochs_arg(text: str) -> int | str:
    """``--epochs``: a positive integer or ``auto`` (argparse names the flag on an error)."""
    if text == "auto":
        return text
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        msg = f"expected an integer >= 1 or auto, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None


def add_train(sub: Any, epilog: str, set_value: Any) -> None:
    from picoalign.config import TrainConfig

    d = TrainConfig()  # the help shows the defaults in force, never a copy of them
    p = sub.add_parser(
        "train",
        help="train a baseline or PICO model on any scorer (global, gpo, fine_grained)",
        description="Train one method: heads on cached frozen backbone features, or the "
        "backbones too with --set model.finetune_text=true (about 4 min on Twemoji on 2 CPU "
        "cores) / model.finetune_image=true (a GPU recipe). Options: defaults < --config "
        "FILE < flags < --set KEY=VALUE (dotted keys reach nested options, e.g. "
        "--set model.pico.tau=0.5). An existing run folder is never replaced silently: "
        "continue it with --resume or replace it with --overwrite.",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", help="dataset spec (see below) (default: twemoji)")
    p.add_argument(
        "--method",
        choices=["baseline", "pico", "global"],
        help="baseline (the scorer's plain score) or pico; 'global' is the legacy "
        "spelling of --method baseline --scorer global (default: pico)",
    )
    p.add_argument(
        "--scorer",
        dest="model.scorer",
        choices=list_scorers(),
        help="what is scored: fine_grained (every patch and word), global (mean "
        "pooled), gpo (VSE∞'s learnt pooling); PICO applies to each (default: fine_grained)",
    )
    p.add_argument("--out", help="run folder for checkpoints and metrics (default: runs/LABEL)")
    p.add_argument(
        "--epochs",
        type=epochs_arg,
        help="an integer, or auto: about 30 passes over each image's captions, at most 20 "
        "epochs (20 with one caption per image, 6 with five) (default: auto)",
    )
    p.add_argument(
        "--seed", type=int, help="training seed: initialisation, data order (default: 0)"
    )
    p.add_argument(
        "--split-seed",
        type=int,
        dest="split_seed",
        help="seed of the built-in datasets' train/val/test split, apart from the training "
        "seed (default: 0)",
    )
    p.add_argument("--batch-size", type=int, dest="batch_size", help=f"(default: {d.batch_size})")
    p.add_argument("--lr", type=float, help=f"(default: {d.lr})")
    p.add_argument(
        "--margin",
        type=float,
        help=f"triplet margin, tune it per method (default: {d.margin}). The loss uses the "
        "hardest negative, so once the margin exceeds every score gap its gradient no longer "
        "depends on it: on the fine-grained scorer 0.8 and 1.2 trained the same model on Tux "
        "Paint (docs/results.md); include small values (0.2-0.6) when tuning",
    )
    p.add_argument("--loss", choices=["triplet", "infonce"], help="(default: triplet)")
    p.add_argument(
        "--image-encoder",
        dest="model.image_encoder",
        help="efficientnet-lite0, hf:NAME_OR_PATH, ... (default: efficientnet-lite0)",
    )
    p.add_argument(
        "--text-encoder",
        dest="model.text_encoder",
        help="minilm, glove-gru, hf:NAME_OR_PATH, ... (default: minilm)",
    )
    p.add_argument("--device", help="auto, cpu, cuda, cuda:1, mps (default: auto)")
    p.add_argument("--config", help="YAML file of TrainConfig options (default: none)")
    p.add_argument(
        "--set",
        type=set_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any option, e.g. model.pico.reading=pair; values are YAML and typed "
        "(a wrong type or choice is an error naming the key)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from OUT/last, on the run's own config.yaml; only "
        "--epochs, --no-progress, --device, save_every_steps, eval_every may change",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run in --out (the old one is deleted after the new run's first "
        "checkpoint, and restored if the new run stops before)",
    )
    p.add_argument(
        "--skip-bad",
        action="store_true",
        dest="skip_bad",
        default=None,
        help="skip bad data entries (reported) instead of stopping",
    )
    add_data_flags(p, skip_bad=False)
    p.add_argument(
        "--no-progress",
        action="store_false",
        dest="progress",
        default=None,
        help="no progress bars",
    )
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    from picoalign.data.base import DataError, DataProblems
    from picoalign.training.loop import train

    cfg = train_config(args)
    started = time.time()
    again = f" --epochs {args.epochs}" if args.resume and args.epochs is not None else ""
    try:
        result = train(cfg, resume=args.resume, overwrite=args.overwrite, on_epoch=_print_epoch)
    except DataProblems as e:
        if not args.resume:
            raise
        where, why = e.problems[0]
        raise DataError(  # not "pass --skip-bad": a resume refuses a changed --skip-bad
            f"{where}: {why} ({len(e.problems)} bad entr{'y' if len(e.problems) == 1 else 'ies'}"
            f"); a resumed run trains on the data it started with: put it back as it was"
        ) from None
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM / SIGHUP (cli.signals)
        _interrupted(Path(cfg.out), started, replacing=args.overwrite, again=again)
        return 128 + getattr(e, "signum", signal.SIGINT)
    except BrokenPipeError:  # `picoalign train ... | head`: stopped at an epoch line
        # main ends it as a shell's SIGPIPE, silently as for every command; a run stopped
        # half-way, though, must say so and how to go on
        _interrupted(
            Path(cfg.out), started, replacing=args.overwrite, what=STDOUT_CLOSED, again=again
        )
        raise
    if os.environ.get("RANK", "0") != "0":  # torchrun: rank 0 reports for the job
        return 0
    try:
        _plot(cfg.model.label, result.history, Path(cfg.out) / "training.png")
    except KeyboardInterrupt as e:  # the run is complete: say so, not just "interrupted"
        print(
            f"picoalign: interrupted while drawing {cfg.out}/training.png; the run itself is "
            f"complete (model saved in {result.out}/best)",
            file=sys.stderr,
        )
        return 128 + getattr(e, "signum", signal.SIGINT)
    print(
        f"selected epoch {result.best.get('epoch')} ({cfg.select}): {cfg.eval_split} rSum "
        f"{result.best.get('rsum', float('nan')):.1f}; model saved in {result.out}/best"
    )
    return 0


def _plot(label: str, history: list[dict[str, Any]], path: Path) -> None:
    """``OUT/training.png``; a plotting problem warns and never fails a finished run."""
    try:
        from picoalign.cli.plots import plot_training

        plot_training({label: history}, path)
    except (ImportError, OSError, RuntimeError, ValueError) as e:  # no/broken matplotlib, disk
        print(f"picoalign: warning: {path} not written ({type(e).__name__}: {e})", file=sys.stderr)


def train_config(args: argparse.Namespace) -> Any:
    """The run's TrainConfig: defaults < --config < flags < --set, or with ``--resume`` the
    run's own ``config.yaml`` < those, refusing a change that would make it another run."""
    from picoalign.config import load_config

    if args.resume and args.overwrite:
        raise ValueError("--resume and --overwrite exclude each other: continue or replace")
    overrides = _overrides(args)
    origins = {k: FLAGS.get(k, "--set") for k in overrides}
    origins.update({k: "--set" for k, _ in args.set})
    cfg = load_config(args.config, overrides, origins=origins)
    if args.out is None and "out" not in overrides and not _config_sets_out(args.config):
        overrides["out"] = f"runs/{cfg.model.label}"  # as documented: runs/LABEL
        cfg = load_config(args.config, overrides, origins=origins)
    if cfg.out.startswith("~"):  # a quoted '~/x', or out: ~/x in a config file: the home
        overrides["out"] = os.path.expanduser(cfg.out)  # (a folder "~" was made beside it)
        cfg = load_config(args.config, overrides, origins=origins)
    if not args.resume:
        if args.config is not None and "data" not in overrides:
            _check_config_data(args.config, cfg.data)
        return cfg
    saved_path = Path(cfg.out) / "config.yaml"
    if not saved_path.is_file():
        raise FileNotFoundError(
            f"--resume: {saved_path} not found (no run to continue in --out {cfg.out})"
        )
    saved = load_config(saved_path)
    cfg = load_config(args.config, overrides, base=saved_path, origins=origins)
    conflicts = _conflicts(saved, cfg, set(dict(args.set)), set(overrides), args.config)
    if conflicts:
        raise ValueError(
            f"--resume: {'; '.join(conflicts)} (a resumed run keeps its data, model and "
            "optimiser; train a new run into another --out instead)"
        )
    return cfg


def _check_config_data(config: str, spec: str) -> None:
    """A missing data path named by a ``--config`` file, reported with the file and its key:
    the plain "file not found" named neither, and a relative path there is read from the
    folder picoalign runs in, which a user running from elsewhere did not expect."""
    from picoalign.config.paths import map_spec_paths

    def found(value: str) -> str:  # a misspelt spec is left to loading, which names it
        path = Path(value).expanduser()
        if not path.exists():
            where = "" if path.is_absolute() else (
                f"; a relative path in a config file is read from the folder picoalign runs "
                f"in ({Path.cwd()}), not from the config file's folder"
            )  # fmt: skip
            raise FileNotFoundError(f"{config}: data: {spec}: {value} not found{where}")
        return value

    map_spec_paths(spec, found)


def _config_sets_out(path: str | None) -> bool:
    """Whether a ``--config`` file gives ``out`` (else the run goes to ``runs/LABEL``, as
    without one; a file without ``out`` used to send every run to ``runs/pico``)."""
    if path is None:
        return False
    from picoalign.config.loading import read_yaml

    return "out" in read_yaml(Path(path))


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    given = {k: v for k, v in vars(args).items() if v is not None}
    overrides = {k: given[k] for k in (*FLAGS, "method") if k in given}
    method = overrides.pop("method", None)
    if method:
        overrides["model.method"] = method
    from picoalign.config.loading import override_value

    overrides.update({k: override_value(k, raw) for k, raw in args.set})
    return overrides


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _conflicts(
    saved: Any,
    new: Any,
    set_keys: set[str],
    given: set[str] = frozenset(),
    config: str | None = None,
) -> list[str]:
    """What ``new`` changes of the run's ``saved`` config that a resume may not change, each
    named as the user gave it: a flag, ``--set KEY``, or the ``--config`` file's key (``given``:
    the keys of flags and ``--set``; a key none of them gave came from the file)."""
    from picoalign.config.paths import with_absolute_paths

    old_f = _flat(with_absolute_paths(saved).to_dict())
    new_f = _flat(with_absolute_paths(new).to_dict())
    found = []
    for key, value in new_f.items():
        if key in RESUMABLE or old_f.get(key) == value:
            continue
        if config is not None and key not in given and key not in set_keys:
            found.append(f"{config}: {key}: {value} differs from the run's {old_f.get(key)}")
            continue
        flag = f"--set {key}" if key in set_keys or key not in FLAGS else FLAGS[key]
        if flag.startswith("--set"):
            found.append(f"{flag}={value} differs from the run's {old_f.get(key)}")
        else:
            found.append(f"{flag} {value} differs from the run's {old_f.get(key)}")
    return found


STDOUT_CLOSED = "stopped: its output was closed (a `| head` that had its lines?)"


def _interrupted(
    out: Path,
    started: float,
    *,
    replacing: bool = False,
    what: str = "interrupted",
    again: str = "",
) -> None:
    """Ctrl-C: say how to continue (the last checkpoint is a complete folder swap). An
    ``--overwrite`` stopped before its first checkpoint has put the previous run back
    (training.runs.Replacement): its checkpoint predates this command, and resuming it would
    continue the old run, not the one the user started. ``again``: the options the resume
    command must repeat (a resume stopped before its first checkpoint has left the run's
    ``--epochs`` as it was, and ``--resume`` alone would end at the old length)."""
    state = out / "last" / "state.pt"
    if replacing and state.is_file() and state.stat().st_mtime < started:
        print(
            f"picoalign: {what} before the new run's first checkpoint; the previous run "
            f"in {out} is back as it was (nothing of the new run to resume)",
            file=sys.stderr,
        )
    elif state.is_file():
        print(
            f"picoalign: {what}; continue with: picoalign train --out {shlex.quote(str(out))} "
            f"--resume{again}",
            file=sys.stderr,
        )
    else:
        msg = f"picoalign: {what} before the first checkpoint: nothing to resume"
        if not (out / "config.yaml").exists():  # training.runs.Replacement removed the rest
            msg += f"; nothing of the run is left in {out} (the same command starts it again)"
        print(msg, file=sys.stderr)


def _print_epoch(row: dict[str, Any]) -> None:
    print(epoch_line(row))
