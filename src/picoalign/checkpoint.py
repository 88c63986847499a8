"""Atomic, code-free persistence: a killed run never leaves a half-written file.

Everything is written to a temporary file in the target's folder and moved into place with
``os.replace`` (atomic on POSIX). Weights use safetensors; the training state (optimizer
moments, epoch, RNG) uses ``torch.save`` and is read back with ``weights_only=True`` — neither
path can execute code from a checkpoint.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file


def _atomic(path: Path, write: Callable[[str], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_safetensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    data = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    _atomic(path, lambda tmp: save_file(data, tmp))


def atomic_write_json(obj: Any, path: Path) -> None:
    def write(tmp: str) -> None:
        Path(tmp).write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")

    _atomic(path, write)


def atomic_write_text(text: str, path: Path) -> None:
    _atomic(path, lambda tmp: Path(tmp).write_text(text))


def atomic_torch_save(obj: Any, path: Path) -> None:
    _atomic(path, lambda tmp: torch.save(obj, tmp))


def safe_torch_load(path: Path) -> Any:
    """``torch.load`` restricted to tensors and plain containers (no pickled code)."""
    return torch.load(path, map_location="cpu", weights_only=True)
