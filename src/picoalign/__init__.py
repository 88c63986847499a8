"""picoalign: reliable image–text alignment and retrieval with PICO.

The public API in one place::

    from picoalign import PICO, PICOConfig, fine_grained_scores, triplet_loss, PicoAligner

The names load on first use (PEP 562): ``import picoalign`` alone does not import torch, so
the ``picoalign`` command answers ``--help`` at once and a Ctrl-C while it starts up is a
clean exit, not an import traceback (``picoalign.__main__``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "infonce_loss": "picoalign.core.losses",
    "triplet_loss": "picoalign.core.losses",
    "PICO": "picoalign.core.pico",
    "PICOConfig": "picoalign.core.pico",
    "fine_grained_scores": "picoalign.core.similarity",
    "global_scores": "picoalign.core.similarity",
    "pair_scores": "picoalign.core.similarity",
    "ModelConfig": "picoalign.model",
    "PicoAligner": "picoalign.model",
}

__all__ = [  # the names of _EXPORTS, and the version
    "PICO",
    "ModelConfig",
    "PICOConfig",
    "PicoAligner",
    "__version__",
    "fine_grained_scores",
    "global_scores",
    "infonce_loss",
    "pair_scores",
    "triplet_loss",
]

if TYPE_CHECKING:  # what type checkers and IDEs see
    from picoalign.core.losses import infonce_loss, triplet_loss
    from picoalign.core.pico import PICO, PICOConfig
    from picoalign.core.similarity import fine_grained_scores, global_scores, pair_scores
    from picoalign.model import ModelConfig, PicoAligner


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'picoalign' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # once loaded, a plain module attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
