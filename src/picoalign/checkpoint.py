"""A saved model folder: ``model.safetensors`` + ``config.json``, where one may be written
(:func:`check_model_folder`), which folder a checkpoint names (:func:`model_dir`: a run's
``best/``), and how many optimiser steps trained the weights.

The step count lives in the safetensors header's metadata (``picoalign.trained_steps``), not
in the state dict, so that every checkpoint keeps one tensor layout and older files load
unchanged (their count is unknown: ``None``). It exists for one mistake: a model built with
``PicoAligner.from_encoders(...)`` and saved before any training has random heads, and an
index or an evaluation of it ran without a word. Loading never executes code.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from picoalign.config.model import ModelConfig
from picoalign.fileio import atomic_write_files, folder_busy, foreign_entries, name_list

STEPS_KEY = "picoalign.trained_steps"
MODEL_FILES = ("config.json", "model.safetensors")


def check_model_folder(folder: Path, *, overwrite: bool) -> None:
    """Refuse to save a model into ``folder`` when it is a file, holds anything but a saved
    model (a run folder, a folder of the user's data: their files would be mixed with the
    model's), or holds a saved model and ``overwrite`` is False (another run's ``best/``
    was replaced without a word)."""
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder}: exists and is not a folder")
    foreign = foreign_entries(folder, MODEL_FILES)
    if foreign:
        raise ValueError(
            f"{folder}: holds files a saved model does not ({name_list(foreign)}); save the "
            "model into a new or empty folder"
        )
    if not overwrite and any((folder / name).exists() for name in MODEL_FILES):
        raise ValueError(f"{folder}: holds a saved model; pass overwrite=True to replace it")


def model_dir(checkpoint: str | Path) -> Path:
    """The model folder of a checkpoint: a model folder itself, or a training run folder's
    ``best/`` (the run's selected model) — the one rule every command and ``load`` use."""
    path = Path(checkpoint)
    if (path / "best" / "config.json").is_file():
        return path / "best"
    if (path / "config.yaml").is_file() and not (path / "config.json").is_file():
        if (path / "last" / "config.json").is_file():  # stopped before its end (select=last)
            finish = (
                "it is training now (another process holds it): wait for it to end"
                if folder_busy(path)
                else f"finish it with: picoalign train --out {shlex.quote(str(path))} --resume"
            )
            raise FileNotFoundError(
                f"{path}: an unfinished training run (no {path / 'best'}: the selected model "
                f"is written when training ends); {finish}, or use its latest checkpoint: "
                f"{path / 'last'}"
            )
        raise FileNotFoundError(
            f"{path}: a training run with no model saved yet (no {path / 'best'} and no "
            f"{path / 'last'}); it was stopped before its first checkpoint"
        )
    return path


def write_model(
    directory: str | Path,
    state: dict[str, Tensor],
    config: ModelConfig,
    trained_steps: int | None,
    *,
    overwrite: bool = False,
) -> None:
    """Write a model folder into a new or empty folder, or over a saved model with
    ``overwrite=True``; a folder holding other files (a run, the user's data, a Hugging Face
    model's ``config.json``) is refused. Both files are written beside their names before
    either replaces its old self, so an interrupted save leaves the old model whole."""
    d = Path(directory).expanduser()
    check_model_folder(d, overwrite=overwrite)
    if overwrite:
        _check_saved_model(d)
    meta = {"format": "pt"}
    if trained_steps is not None:
        meta[STEPS_KEY] = str(trained_steps)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    text = _config_text(config)
    atomic_write_files(
        [
            (d / "model.safetensors", lambda tmp: save_file(tensors, tmp, metadata=meta)),
            (d / "config.json", lambda tmp: Path(tmp).write_text(text)),
        ]
    )


def _config_text(config: ModelConfig) -> str:
    return json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n"


def _check_saved_model(d: Path) -> None:
    """ValueError unless the model files in ``d`` are a picoalign model's: ``overwrite``
    replaces a saved model, never a file of the same name that is the user's own."""
    refuse = "; overwrite=True replaces only a saved picoalign model: save into a new folder"
    cfg_path, weights_path = d / "config.json", d / "model.safetensors"
    if weights_path.exists() and not cfg_path.is_file():
        raise ValueError(f"{weights_path}: no picoalign config.json beside it{refuse}")
    if cfg_path.exists():
        try:
            _, fields = _read_config(cfg_path)
        except ValueError as e:
            raise ValueError(f"{e}{refuse}") from e
        missing = [k for k in ("image_encoder", "text_encoder", "embed_dim") if k not in fields]
        if missing:  # {} is a valid ModelConfig, but not a config picoalign saved
            raise ValueError(
                f"{cfg_path}: not a picoalign model config (no {', '.join(missing)}){refuse}"
            )


def _read_config(path: Path) -> tuple[ModelConfig, dict[str, Any]]:
    """A model's ``config.json`` as a ModelConfig, and its fields as written; ValueError
    naming the file when it is not one."""
    try:
        fields = json.loads(path.read_text())
        return ModelConfig(**fields), fields
    except (TypeError, ValueError, AttributeError) as e:  # JSONDecodeError is a ValueError
        raise ValueError(f"{path}: not a picoalign model config ({e})") from e


def model_folder(checkpoint: str | Path) -> Path:
    """The model folder of a checkpoint (a model folder, or a training run's ``best/``:
    :func:`model_dir`), with both its files; ``FileNotFoundError`` names what is missing."""
    checkpoint = Path(checkpoint).expanduser()
    if not checkpoint.exists():
        raise FileNotFoundError(f"{checkpoint}: checkpoint not found (no such file or folder)")
    if not checkpoint.is_dir():  # run/config.yaml, best/model.safetensors: its folder is meant
        raise FileNotFoundError(
            f"{checkpoint}: checkpoint not found (a file: give the model or run folder "
            f"that holds it, {checkpoint.parent})"
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
    cfg, _ = _read_config(cfg_path)
    try:
        state = load_file(str(weights_path))
        with safe_open(str(weights_path), framework="pt") as f:
            steps = _steps((f.metadata() or {}).get(STEPS_KEY))
    except (SafetensorError, OSError, ValueError) as e:  # a truncated or foreign file
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
