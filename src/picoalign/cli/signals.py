"""SIGTERM and SIGHUP stop a command as Ctrl-C does.

``kill``, ``docker stop``, a batch scheduler's time limit (SIGTERM) and a closed terminal
(SIGHUP) ended the process on the spot: an ``--overwrite`` stopped before its first
checkpoint left the old run in its hidden aside folder and a stub that refused both a re-run
and ``--resume``, and a new run left the same stub. Raised as :class:`Stopped` (a
``KeyboardInterrupt``), they take the path Ctrl-C takes: the old run is put back, a fresh
run's files are removed, and the command says how to continue. The exit status is the
shell's for the signal (128 + its number).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from types import FrameType

STOP_SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGHUP") if hasattr(signal, n))


class Stopped(KeyboardInterrupt):
    """A stop signal, raised where the program was; ``signum`` says which."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def stop_signals_interrupt() -> Iterator[None]:
    """Within the block, :data:`STOP_SIGNALS` raise :class:`Stopped`; the handlers are put
    back after it. Only the main thread can set handlers: elsewhere the block runs as is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: FrameType | None) -> None:
        global PENDING, _RESEND
        if frame is not None and frame.f_code.co_name in _SWALLOWING:
            # raised here, Python would print "Exception ignored in" and drop it: the signal
            # comes again in a moment, when the program is back in ordinary code
            PENDING = signum
            _RESEND = threading.Timer(RESEND_S, os.kill, (os.getpid(), signum))
            _RESEND.daemon = True
            _RESEND.start()
            return
        PENDING = None
        raise Stopped(signum)

    before = {s: signal.signal(s, stop) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        if _RESEND is not None:  # not after the handlers go back: it would kill the process
            _RESEND.cancel()  # (a signal still put off is left to take_pending)
        for s, handler in before.items():
            signal.signal(s, handler)


def take_pending() -> int | None:
    """The stop signal that arrived but was never raised where the command could see it
    (an exception in a finaliser is printed and dropped), cleared: a command that then ran
    to its end still exits as stopped. None if there was none."""
    global PENDING
    signum, PENDING = PENDING, None
    return signum


# a stop signal put off (in a finaliser) and not yet raised as Stopped
PENDING: int | None = None
# functions in which Python drops a raised exception; and the delay before a signal is resent
_SWALLOWING = frozenset({"__del__"})
RESEND_S = 0.05
_RESEND: threading.Timer | None = None
