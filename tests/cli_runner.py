"""Run the ``picoalign`` CLI in-process from tests (imported by top-level test modules)."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from pathlib import Path


def run_cli(*argv: str) -> tuple[int, str, str]:
    """``picoalign ARGV`` in this process: (exit code, stdout, stderr). An exception that
    ``main`` does not turn into a one-line error propagates (the test then fails)."""
    from picoalign.cli.commands import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(argv))
    return rc, out.getvalue(), err.getvalue()


# the offline toy encoders every CLI training test uses (no downloads, seconds per run)
TOY_ENCODERS = ("--image-encoder", "random-conv", "--text-encoder", "hash-text")


def toy_train_argv(
    data: Path, out: Path, *extra: str, epochs: int = 2, batch_size: int = 8
) -> list[str]:
    """``picoalign train`` on a toy JSONL set with the toy encoders and a 16-wide space."""
    return [
        "train", "--data", f"jsonl:{data}", *TOY_ENCODERS, "--epochs", str(epochs),
        "--batch-size", str(batch_size), "--no-progress", "--set", "model.embed_dim=16",
        "--out", str(out), *extra,
    ]  # fmt: skip


@contextlib.contextmanager
def one_thread_with_cache(cache: Path) -> Iterator[None]:
    """One torch thread and ``PICOALIGN_CACHE`` = ``cache`` for the block, both restored:
    the reference runs of the resume tests are compared bit for bit with runs in
    subprocesses, which use one thread too."""
    import pytest
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("PICOALIGN_CACHE", str(cache))
            yield
    finally:
        torch.set_num_threads(threads)
