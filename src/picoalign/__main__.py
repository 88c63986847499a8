"""``python -m picoalign`` and the ``picoalign`` command (also what torchrun launches).

The command's modules import torch, which takes a second or two; :func:`run` imports them
inside its guard, so a Ctrl-C in that time exits with status 130 and one line, as it does
later (``picoalign.cli.commands.main``)."""

from __future__ import annotations

import sys


def run() -> int:
    try:
        from picoalign.cli.commands import main
    except KeyboardInterrupt:
        print("picoalign: interrupted", file=sys.stderr)
        return 130
    return main()


if __name__ == "__main__":
    sys.exit(run())
