"""Progress bars and warnings in a log file: each message on a line of its own."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

from cli_runner import toy_train_argv
from picoalign.progress import LOG_INTERVAL_S, line_start, progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_bar_in_a_log_keeps_its_last_state_on_a_line_of_its_own() -> None:
    log = io.StringIO()
    bar = progress_bar(range(3), file=log, leave=False, desc="work")
    assert bar.mininterval == LOG_INTERVAL_S
    for _ in bar:
        pass
    assert log.getvalue().endswith("\n") and "3/3" in log.getvalue().splitlines()[-1]
    assert "0/3" not in log.getvalue()  # no 0% state joined to it by "\r" (the re-test)
    assert log.getvalue().count("\r") <= 1 and log.getvalue().count("\n") == 1


def test_a_long_bar_in_a_log_writes_each_state_on_a_line_of_its_own() -> None:
    """A bar running past its first half-minute redrew with "\\r": in a log its states,
    one per half-minute over an hour-long epoch, were one physical line."""
    log = io.StringIO()
    bar = progress_bar(total=3, file=log, desc="epoch")
    for _ in range(3):
        bar.last_print_t = bar.start_t + bar.delay  # as if the 30 s had passed
        bar.refresh()
        bar.update()
    print(line_start(log) + "picoalign: warning: a message", file=log)
    bar.refresh()
    bar.close()
    lines = log.getvalue().split("\n")
    assert "\r" not in log.getvalue()
    assert lines[-1] == "" and all(lines[:-1]), lines  # no blank line, ends with a newline
    assert lines[3] == "picoalign: warning: a message"
    assert [line.split(":")[0] for line in lines[:3] + lines[4:-1]] == ["epoch"] * 5
    assert "3/3" in lines[-2]


def test_a_bar_on_a_terminal_is_left_as_asked() -> None:
    term = Terminal()
    bar = progress_bar(range(3), file=term, leave=False)
    assert bar.mininterval != LOG_INTERVAL_S
    for _ in bar:
        pass
    assert not term.getvalue().endswith("\n")  # erased in place, as tqdm does


def test_a_message_beside_an_open_bar_starts_its_own_line() -> None:
    log = io.StringIO()
    assert line_start(log) == ""  # no bar open
    with progress_bar(total=2, file=log) as bar:
        assert line_start(log) == ""  # not drawn yet (its first 30 s): nothing on the line
        bar.update()
        bar.last_print_t = bar.start_t + bar.delay  # as after its first drawing
        bar.refresh()
        assert line_start(log) == "\n"
        assert line_start(log) == ""  # that newline ended the bar's line: no blank line
        bar.refresh()
        assert line_start(log) == "\n"
    assert line_start(log) == ""
    with progress_bar(total=2, file=log, disable=True):
        assert line_start(log) == ""  # a disabled bar draws nothing


def test_a_message_on_a_terminal_clears_the_open_bar() -> None:
    term = Terminal()
    with progress_bar(total=2, file=term) as bar:
        bar.update()
        drawn = term.getvalue()
        assert line_start(term) == ""
        erased = term.getvalue()[len(drawn) :]
        assert erased.startswith("\r") and erased.strip(" \r") == ""


def test_a_warning_in_a_log_of_train_starts_its_line(tmp_path: Path, write_jsonl_dataset) -> None:
    """``picoalign train ... 2> log``: warnings came right after a bar erased itself with
    "\\r" (the image check's, the last epoch's), so in the file they sat on the bar's line."""
    data = write_jsonl_dataset(tmp_path / "data")
    argv = [a for a in toy_train_argv(data, tmp_path / "run", epochs=1) if a != "--no-progress"]
    env = {**os.environ, "PICOALIGN_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "picoalign", *argv, "--method", "pico"],
        capture_output=True,  # bytes: text mode would read each "\r" as a line end
        env=env,
        timeout=300,
    )
    err = proc.stderr.decode()
    assert proc.returncode == 0, err[-2000:]
    said = [line for line in err.split("\n") if "picoalign: warning:" in line]
    assert said and all(line.startswith("picoalign: warning:") for line in said), said
    assert "checking images" in err and "epoch 1/1" in err  # bars were drawn
