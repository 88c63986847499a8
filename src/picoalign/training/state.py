"""The run folder's training state: what ``--resume`` needs to continue exactly.

``OUT/last`` holds the weights, the optimiser and loss state, the position inside the epoch,
the metrics history and the RNG state, written as one atomic folder swap so a run killed at
any instant resumes from a consistent step (see :func:`~picoalign.fileio.atomic_replace_dir`).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from picoalign.fileio import (
    atomic_replace_dir,
    atomic_torch_save,
    atomic_write_text,
    recover_dir,
    remove_stale_temps,
    safe_torch_load,
)
from picoalign.model import PicoAligner


@dataclass(frozen=True)
class Position:
    """Where training stands: ``step`` batches of epoch ``epoch`` (0-based) are done, with
    the running loss ``total`` over ``count`` captions. ``Position(e)`` = start of epoch e."""

    epoch: int = 0
    step: int = 0
    total: float = 0.0
    count: int = 0


def save_last(
    out: Path,
    model: PicoAligner,
    opt: torch.optim.Optimizer,
    loss_fn: torch.nn.Module,
    pos: Position,
    history: list[dict[str, Any]],
    best: dict[str, Any],
) -> None:
    """Write ``OUT/last`` (weights, optimiser, position, RNG) as one atomic folder swap."""
    state = {
        "optimizer": opt.state_dict(),
        "loss": loss_fn.state_dict(),
        "position": [pos.epoch, pos.step, pos.count],
        "total": pos.total,
        "history": json.dumps(history),
        "best": json.dumps(best),
        "rng": torch.get_rng_state(),
    }
    if torch.cuda.is_available():  # the device this process trains on (one per rank)
        state["cuda_rng"] = torch.cuda.get_rng_state()

    def write(folder: Path) -> None:
        model.save(folder)
        atomic_torch_save(state, folder / "state.pt")

    atomic_replace_dir(out / "last", write)


def restore_last(
    out: Path,
    model: PicoAligner,
    opt: torch.optim.Optimizer,
    loss_fn: torch.nn.Module,
    *,
    repair: bool = True,
) -> tuple[Position, list[dict[str, Any]], dict[str, Any]]:
    """Load ``OUT/last`` into the fresh model/optimiser; return where training goes on, the
    metrics history and the best-epoch record.

    ``repair`` first undoes what a killed run left (a half-swapped folder, stale temporary
    files). Only the writing rank may do that: another rank's cleanup, running while the
    writer has moved on to its first atomic write, deleted the writer's temporary file
    (a ``--resume`` under torchrun failed on rank 0 that way).
    """
    if repair:
        recover_dir(out / "last")
        recover_dir(out / "best")
        remove_stale_temps(out)
    if not (out / "last" / "state.pt").is_file():
        stub = (out / "config.yaml").is_file()
        raise FileNotFoundError(
            f"--resume: no checkpoint in {out / 'last'}"
            + (
                "; the run stopped before its first one: start it again with --overwrite"
                if stub
                else ""
            )
        )
    state = safe_torch_load(out / "last" / "state.pt")
    last = PicoAligner.load(out / "last")
    model.load_state_dict(last.state_dict())
    model.trained_steps = last.trained_steps  # the count goes on from the checkpoint's
    opt.load_state_dict(state["optimizer"])
    if state.get("loss"):
        loss_fn.load_state_dict(state["loss"])
    history = json.loads(state["history"])
    best = json.loads(state["best"])
    if not (out / "best" / "config.json").is_file():
        # best/ was deleted: its weights are gone, so the best of the remaining epochs takes
        # its place (else best/ would get the last model while result.best and the printed
        # summary still named the lost epoch).
        best = {}
    if "rng" in state:
        torch.set_rng_state(state["rng"])
    if state.get("cuda_rng") is not None and torch.cuda.is_available():
        _restore_cuda_rng(state["cuda_rng"])
    if "position" not in state:  # written by picoalign < 0.2: end of state["epoch"]
        return Position(int(state["epoch"]) + 1), history, best
    epoch, step, count = (int(x) for x in state["position"])
    return Position(epoch, step, float(state["total"]), count), history, best


def _restore_cuda_rng(saved: Any) -> None:
    """The CUDA generator of the current device, as saved. Runs written before it saved one
    state per visible GPU: the current device's, if that machine had one (a run saved on a
    4-GPU machine and resumed on a 1-GPU machine failed with an IndexError)."""
    if isinstance(saved, (list, tuple)):
        i = torch.cuda.current_device()
        saved = saved[i] if i < len(saved) else None
    if saved is not None:
        torch.cuda.set_rng_state(saved)


def write_metrics(out: Path, history: list[dict[str, Any]]) -> None:
    lines = "".join(json.dumps(row) + "\n" for row in history)
    atomic_write_text(lines, out / "metrics.jsonl")
    scalar_keys = [k for k in history[-1] if not isinstance(history[-1][k], list)]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=scalar_keys, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(buf.getvalue(), out / "metrics.csv")
