"""A saved model folder: ``model.safetensors`` + ``config.json``, and how many optimiser steps
trained the weights.

The step count lives in the safetensors header's metadata (``picoalign.trained_steps``), not
in the state dict, so that every checkpoint keeps one tensor layout and older files load
unchanged (their count is unknown: ``None``). It exists for one mistake: a model built with
``PicoAligner.from_encoders(...)`` and saved before any training has random heads, and an
index or an evaluation of it ran without a word. Loading never executes code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors import safe_open
from safetensors.torch import load_file
from torch import Tensor

from picoalign.config.model import ModelConfig
from picoalign.fileio import (
    atomic_write_json,
    atomic_write_safetensors,
    check_model_folder,
    make_dirs,
    model_dir,
)

STEPS_KEY = "picoalign.trained_steps"


def write_model(
    directory: str | Path,
    state: dict[str, Tensor],
    config: ModelConfig,
    trained_steps: int | None,
    *,
    overwrite: bool = False,
) -> None:
    """Write a model folder (each file atomically) into a new or empty folder, or over a
    saved model with ``overwrite=True``; a folder holding other files (a run, the user's
    data) is refused (:func:`fileio.check_model_folder`)."""
    d = Path(directory)
    check_model_folder(d, overwrite=overwrite)
    make_dirs(d)
    meta = {"format": "pt"}
    if trained_steps is not None:
        meta[STEPS_KEY] = str(trained_steps)
    atomic_write_safetensors(state, d / "model.safetensors", metadata=meta)
    atomic_write_json(config.to_dict(), d / "config.json")


def model_folder(checkpoint: str | Path) -> Path:
    """The model folder of a checkpoint (a model folder, or a training run's ``best/``:
    :func:`picoalign.fileio.model_dir`), with both its files; ``FileNotFoundError`` names
    what is missing."""
    if not Path(checkpoint).exists():
        raise FileNotFoundError(
            f"{checkpoint}: checkpoint not found (no {Path(checkpoint) / 'config.json'})"
        )
    d = model_dir(checkpoint)
    for name in ("config.json", "model.safetensors"):
        if not (d / name).is_file():
            raise FileNotFoundError(f"{d / name}: not found (is {d} a picoalign checkpoint?)")
    return d


def read_model(directory: str | Path) -> tuple[ModelConfig, dict[str, Tensor], int | None]:
    """A model folder (or a training run's ``best/``): its config, weights and step count
    (``None`` where the file predates the count); ``FileNotFoundError``/``ValueError`` name
    the path."""
    d = model_folder(directory)
    cfg_path, weights_path = d / "config.json", d / "model.safetensors"
    try:
        cfg = ModelConfig(**json.loads(cfg_path.read_text()))
    except (TypeError, ValueError, AttributeError) as e:  # JSONDecodeError is a ValueError
        raise ValueError(f"{cfg_path}: not a picoalign model config ({e})") from e
    try:
        state = load_file(str(weights_path))
        with safe_open(str(weights_path), framework="pt") as f:
            steps = _steps((f.metadata() or {}).get(STEPS_KEY))
    except Exception as e:  # SafetensorError: a truncated or foreign file
        raise ValueError(f"{weights_path}: cannot load the model weights ({e})") from e
    return cfg, state, steps


def _steps(text: Any) -> int | None:
    if text is None:
        return None
    if not str(text).isdigit():
        raise ValueError(f"{STEPS_KEY} is {text!r}, not a count of steps")
    return int(text)


def untrained_note(model: Any, what: str) -> str | None:
    """The warning for ``what`` (an index, an evaluation) of a model no optimiser step has
    trained, or None: its heads are random, so its results mean nothing."""
    if getattr(model, "trained_steps", None) != 0:
        return None
    return (
        f"{what} of a model that was never trained (no optimiser step is recorded in it; "
        "PicoAligner.after_step counts them): its heads are random, so are its results; "
        "train it first (picoalign train)"
    )
