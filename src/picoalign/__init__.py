"""picoalign: reliable image–text alignment and retrieval with PICO.

The public API in one place::

    from picoalign import PICO, PICOConfig, fine_grained_scores, triplet_loss, PicoAligner
"""

from picoalign.core.losses import infonce_loss, triplet_loss
from picoalign.core.pico import PICO, PICOConfig
from picoalign.core.similarity import fine_grained_scores, global_scores, pair_scores
from picoalign.model import ModelConfig, PicoAligner

__version__ = "0.1.0"

__all__ = [
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
