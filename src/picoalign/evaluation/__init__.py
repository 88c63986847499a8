"""The retrieval protocol (R@K both ways, rSum, COCO 1K folds) and the one evaluation
front-end, :func:`evaluate`, that the CLI, the demo, training and the benchmarks share."""

from picoalign.evaluation.evaluate import embed_features, evaluate
from picoalign.evaluation.metrics import (
    SMALL_SPLIT,
    blocked_recall_metrics,
    coarse_split_warning,
    duplicate_caption_warning,
    format_table,
    recall_metrics,
)
from picoalign.evaluation.protocols import PROTOCOLS, coco_1k_folds

__all__ = [
    "PROTOCOLS",
    "SMALL_SPLIT",
    "blocked_recall_metrics",
    "coarse_split_warning",
    "coco_1k_folds",
    "duplicate_caption_warning",
    "embed_features",
    "evaluate",
    "format_table",
    "recall_metrics",
]
