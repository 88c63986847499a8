"""``picoalign`` command line: train, evaluate, index, search, datasets, demo.

Errors a user can cause (bad path, bad data, bad option) print one line and exit 2 without a
traceback; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import warnings
from collections.abc import Sequence
from typing import Any, NoReturn

from picoalign import __version__
from picoalign.cli.data_flags import (
    expand_home,
)
from picoalign.cli.evaluate import add_evaluate
from picoalign.cli.signals import stop_signals_interrupt, take_pending
from picoalign.cli.train import add_train, epochs_arg
from picoalign.data.spec import specs_help
from picoalign.progress import line_start

EPILOG = specs_help()  # from the dataset registry: every --data spelling


def _set_value(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--set expects KEY=VALUE, got {text!r}")
    key, raw = text.split("=", 1)
    if not all(part.strip() for part in key.split(".")):  # "=3", "model.=3", "a..b=1"
        raise argparse.ArgumentTypeError(f"--set expects KEY=VALUE, got {text!r}: no KEY")
    return key.strip(), raw  # read by the option's type in train._overrides


def _add_datasets(sub: Any) -> None:
    p = sub.add_parser("datasets", help="list the built-in datasets and whether each is installed")
    p.set_defaults(func=cmd_datasets)


def cmd_datasets(args: argparse.Namespace) -> int:
    from picoalign.data import REGISTRY, list_datasets

    rows = list_datasets()
    width = max(len(name) for name, _, _ in rows)
    for name, desc, installed in rows:
        mark = "installed" if installed else "missing  "
        print(f"{name:<{width}}  {mark}  {desc}")
    hints = {e.spelling: e.install_hint for e in REGISTRY.values()}
    missing = [(name, hints.get(name)) for name, _, installed in rows if not installed]
    if missing:  # what "missing" asks the user to do, where the registry knows it
        print()
        for name, hint in missing:
            print(f"to install {name}: {hint or 'see docs/data.md'}")
    return 0


def _add_demo(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="the main job: baseline vs PICO on Twemoji, side by side",
        description="Train the fine-grained baseline and PICO with the same seed and budget on "
        "the built-in data, evaluate both, print the table, write plots, run a few searches.",
    )
    p.add_argument("--data", default="twemoji", help="dataset spec (see picoalign train -h)")
    p.add_argument(
        "--out", default="runs/demo", help="folder of both runs, results.json and the plots"
    )
    p.add_argument(
        "--epochs",
        type=epochs_arg,
        default=None,
        help="epochs per method, or auto (default: the recipe's, auto: 20 with one caption "
        "per image, fewer with more)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of both runs and of the splits")
    p.add_argument(
        "--quick",
        action="store_true",
        help="a tiny smoke run (about 10 s once Twemoji's features are cached; encoding them "
        "first takes about a minute on 2 cores)",
    )
    p.add_argument("--no-progress", action="store_false", dest="progress", help="no progress bars")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from picoalign.cli.demo import run_demo

    return run_demo(
        data=args.data,
        out=args.out,
        epochs=args.epochs,
        seed=args.seed,
        quick=args.quick,
        progress=args.progress,
    )


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the epilogs' layout and appends ``(default: …)`` to every option that has a
    meaningful default and does not already say it (None means "unset"; on/off flags are
    described by their help)."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        """A prose line (a command's description) wrapped to the terminal; an indented line
        (the epilog's table of data specs) kept as laid out."""
        import textwrap

        out = []
        for line in text.splitlines():
            if len(indent + line) <= width or line.startswith(" "):
                out.append(indent + line)
            else:
                out += textwrap.wrap(line, width, initial_indent=indent, subsequent_indent=indent)
        return "\n".join(out)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "default" in text
            or any(default is unset for unset in (None, False, argparse.SUPPRESS))
            or (default == [] and action.option_strings)
            or not action.option_strings
            or action.nargs == 0  # on/off flags: their help says what they switch
        ):
            return text
        return f"{text} (default: %(default)s)".strip()


DEBUG_HELP = "show tracebacks on errors (accepted before or after the command)"


class _Parser(argparse.ArgumentParser):
    """argparse with picoalign's one-line errors: a usage error used to print the whole
    usage block (a dozen lines for ``train``) above the line that says what is wrong."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} -h)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="picoalign",
        description="Reliable image–text alignment and retrieval with PICO.",
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"picoalign {__version__}")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_train(sub, EPILOG, _set_value)
    add_evaluate(sub, EPILOG)
    try:
        from picoalign.cli.retrieval import add_parsers
    except ImportError:  # retrieval extras unavailable: the other commands still work
        add_parsers = None
    if add_parsers is not None:
        add_parsers(sub)
    _add_datasets(sub)
    _add_demo(sub)
    from picoalign.cli.cache import add_cache

    add_cache(sub)
    for command in sub.choices.values():
        command.formatter_class = HelpFormatter
        # SUPPRESS: absent after the command, the value before it (or False) stands
        command.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP
        )
    return parser


# ValueError covers DataError and bad options; OSError covers missing/unreadable files;
# unknown encoders (UnknownEncoderError, a KeyError) are added in main().
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError)
# how long a rank that stops because rank 0 failed waits before exiting: torchrun reports the
# first worker to exit as the "root cause", and that should be rank 0 with the real error
PEER_EXIT_DELAY_S = 3.0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command == "search" and not any(e.startswith("-") for e in extra):
        # queries after an option (`search INDEX -k 3 "a red apple"`): argparse ends a
        # positional list at the first option, so the rest of the queries come back here
        args.queries = [*args.queries, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command is None:
        parser.print_help()
        return 2
    # a library warning is one line of the command's own, not a source location and line
    # (on a line of its own beside an open progress bar: picoalign.progress)
    warnings.formatwarning = lambda message, *_, **__: (
        f"{line_start()}picoalign: warning: {message}\n"
    )
    try:
        from picoalign.training.allocator import keep_freed_memory

        keep_freed_memory()  # every command scores in large CPU blocks (allocator module doc)
        with stop_signals_interrupt():
            expand_home(args)
            code = int(args.func(args) or 0)
        signum = take_pending()  # a stop signal raised where Python dropped it: still stopped
        if signum is None:
            return code
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM / SIGHUP (cli.signals)
        take_pending()
        signum = getattr(e, "signum", signal.SIGINT)
    except BrokenPipeError:  # `picoalign search ... | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush error at exit
        return 141  # as a shell reports SIGPIPE; no message
    except Exception as e:
        from picoalign.encoders.registry import UnknownEncoderError
        from picoalign.training.distributed import PeerFailed, report_to_launcher
        from picoalign.training.loop import TrainingError

        if isinstance(e, PeerFailed) and not args.debug:
            report_to_launcher(str(e))  # rank 0 has printed the error: one report, not one a rank
            time.sleep(PEER_EXIT_DELAY_S)  # rank 0 exits first: torchrun names it the root cause
            return 2

        # UnknownEncoderError is a KeyError (not covered by USER_ERRORS) but a user error.
        if args.debug or not isinstance(e, (*USER_ERRORS, TrainingError, UnknownEncoderError)):
            raise
        from picoalign.fileio import first_line

        msg = first_line(e)
        print(f"picoalign: error: {msg}", file=sys.stderr)
        report_to_launcher(msg)  # torchrun's failure summary says it too
        return 2
    print(f"{line_start()}picoalign: interrupted", file=sys.stderr)  # stopped, either way
    return 128 + signum


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
