"""``python -m picoalign`` and the ``picoalign`` command (also what torchrun launches).

The command's modules import torch, which takes a second or two; :func:`run` imports them
inside its guard, so a Ctrl-C in that time exits with status 130 and one line, as it does
later (``picoalign.cli.commands.main``). Once the command has ended, Ctrl-C is ignored: the
interpreter's teardown (torch's exit handlers, threads) takes a moment, and a Ctrl-C then
made a run that had printed "model saved" exit 130, as if it had been stopped."""

from __future__ import annotations

import signal
import sys


def run() -> int:
    try:
        from picoalign.cli.commands import main
    except KeyboardInterrupt:
        print("picoalign: interrupted", file=sys.stderr)
        return 130
    code = main()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the work is done: its status stands
    return code


if __name__ == "__main__":
    sys.exit(run())
