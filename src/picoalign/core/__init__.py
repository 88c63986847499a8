"""The method core: scoring, PICO's estimators, prototype bank and feedback, the losses.

Pure tensor code. It imports torch and nothing else of picoalign, so it can be dropped into
any PyTorch model (``tests/test_architecture.py`` checks that rule).
"""

from picoalign.core.gather import ddp_all_gather
from picoalign.core.losses import infonce_loss, positive_mask, triplet_loss
from picoalign.core.pico import PICO, PICOConfig
from picoalign.core.similarity import (
    fine_grained_scores,
    global_scores,
    l2_normalize,
    pair_scores,
    pool_tokens,
)

__all__ = [
    "PICO",
    "PICOConfig",
    "ddp_all_gather",
    "fine_grained_scores",
    "global_scores",
    "infonce_loss",
    "l2_normalize",
    "pair_scores",
    "pool_tokens",
    "positive_mask",
    "triplet_loss",
]
