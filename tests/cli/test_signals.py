"""SIGTERM / SIGHUP stop a command as Ctrl-C does, also when they arrive in a finaliser."""

from __future__ import annotations

import os
import signal
import time

import pytest

from cli_runner import run_cli
from picoalign.cli import signals
from picoalign.cli.signals import Stopped, stop_signals_interrupt, take_pending


class KilledWhileCollected:
    """Sends a stop signal from its finaliser, where Python drops a raised exception: how
    the re-test lost a SIGTERM during `search` (it ended 0, with a traceback printed)."""

    def __del__(self) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):  # bytecode for the handler to run in, still inside __del__
            pass


def test_a_signal_in_a_finaliser_is_raised_again_outside_it(capfd) -> None:
    with pytest.raises(Stopped) as e, stop_signals_interrupt():
        KilledWhileCollected()  # collected at once: the handler runs in its __del__
        time.sleep(5)  # the resent signal ends this
    assert e.value.signum == signal.SIGTERM and take_pending() is None
    assert "Exception ignored" not in capfd.readouterr().err


def test_a_command_that_ends_before_the_resend_still_exits_as_stopped(monkeypatch, capsys) -> None:
    monkeypatch.setattr(signals, "RESEND_S", 30.0)  # the command ends first

    def datasets(args) -> int:
        KilledWhileCollected()
        return 0

    monkeypatch.setattr("picoalign.cli.commands.cmd_datasets", datasets)
    rc, _, err = run_cli("datasets")
    assert rc == 128 + signal.SIGTERM and "picoalign: interrupted" in err
    assert take_pending() is None
    time.sleep(0.1)  # the cancelled resend never comes (it would end this test process)
