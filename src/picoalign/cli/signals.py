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
        raise Stopped(signum)

    before = {s: signal.signal(s, stop) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
