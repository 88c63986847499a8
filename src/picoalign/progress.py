"""Progress bars and warnings that stay readable when stderr is a log file.

On a terminal a tqdm bar redraws itself in place (``\\r``), and a bar that closes with
``leave=False`` erases itself. Written to a file (``picoalign train ... 2> log``) those
redraws pile up on one line, ten a second, and whatever comes next (an epoch line, a
warning) starts on that line behind the erased bar. So off a terminal every bar redraws at
most every :data:`LOG_INTERVAL_S` seconds (first after that long: work shorter than that
logs one line, its final state), each state it writes is a line of its own (a bar running
for minutes logs one line per half-minute, not one line of ``\r``-joined states), and a
warning printed while a bar is open starts on a line of its own (:func:`line_start`).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import IO, Any

from tqdm.auto import tqdm

# off a terminal, a bar's state is written at most this often (a log line per half-minute)
LOG_INTERVAL_S = 30.0


def is_terminal(stream: IO[str] | None) -> bool:
    """Whether ``stream`` redraws ``\\r`` in place (a closed or odd stream: no)."""
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def progress_bar(iterable: Iterable[Any] | None = None, **kwargs: Any) -> tqdm:
    """``tqdm(iterable, **kwargs)``, written for a log file when stderr is not a terminal."""
    if not is_terminal(kwargs.get("file") or sys.stderr):
        kwargs["leave"] = True  # its last state stays, and what follows starts a line
        kwargs.setdefault("mininterval", LOG_INTERVAL_S)
        kwargs.setdefault("delay", LOG_INTERVAL_S)  # no 0% state: a short bar is one line
        return _LogBar(iterable, **kwargs)
    return tqdm(iterable, **kwargs)


class _LogBar(tqdm):
    """A bar for a log: drawn first after its ``delay``, always in its final state when it
    closes (tqdm writes nothing at all for a bar closed before its delay), and each state on
    a line of its own.

    tqdm's printer starts every state with ``\r`` to redraw it in place; here a state
    instead ends the line the previous one left open (``line_open``), so the log holds one
    line per state. The last state's line is ended by ``close`` (tqdm writes that newline),
    or by a message printed meanwhile (:func:`line_start` says it did)."""

    line_open = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if hasattr(self, "sp"):  # a disabled bar has no printer
            self.sp = self._print_line

    def _print_line(self, state: str) -> None:
        self.fp.write(("\n" if self.line_open else "") + state)
        self.fp.flush()
        self.line_open = True

    def close(self) -> None:
        if not getattr(self, "disable", True) and hasattr(self, "last_print_t"):
            self.last_print_t = max(self.last_print_t, self.start_t + self.delay)
        super().close()


def open_bars() -> list[tqdm]:
    """The bars drawn now: open (disabled ones have no start time) and past their ``delay``
    (a log's bar, before its first drawing, has put nothing on the line)."""
    return [
        b
        for b in list(getattr(tqdm, "_instances", ()))
        if hasattr(b, "start_t") and b.last_print_t >= b.start_t + b.delay
    ]


def line_start(stream: IO[str] | None = None) -> str:
    """What to write before a message line on ``stream`` (stderr) while a bar may be open.

    On a terminal it clears the open bars (each redraws itself at its next update, below
    the message) and returns ""; in a log it returns a newline if a bar is open, as the
    bar's line does not end until the bar does. For ``warnings.formatwarning``, which the
    command line sets: showing a warning through it keeps ``warnings.catch_warnings(record=
    True)`` working, where replacing ``showwarning`` would bypass the recording."""
    stream = stream if stream is not None else sys.stderr
    bars = [b for b in open_bars() if b.fp in (stream, sys.stderr, sys.stdout)]
    if not bars:
        return ""
    if is_terminal(stream):
        for bar in bars:
            bar.clear()
        return ""
    open_lines = [b for b in bars if getattr(b, "line_open", True)]
    for bar in open_lines:
        bar.line_open = False  # the message ends it: the bar's next state starts its own line
    return "\n" if open_lines else ""
