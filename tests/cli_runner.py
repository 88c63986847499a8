"""Run the ``picoalign`` CLI in-process from tests (imported by top-level test modules)."""

from __future__ import annotations

import contextlib
import io


def run_cli(*argv: str) -> tuple[int, str, str]:
    """``picoalign ARGV`` in this process: (exit code, stdout, stderr). An exception that
    ``main`` does not turn into a one-line error propagates (the test then fails)."""
    from picoalign.cli.commands import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(argv))
    return rc, out.getvalue(), err.getvalue()
