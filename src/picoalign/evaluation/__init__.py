"""The retrieval protocol (R@K both ways, rSum, COCO 1K folds) and the one evaluation
front-end that the CLI, the demo, training and the benchmarks share."""

from picoalign.evaluation.metrics import (
    blocked_recall_metrics,
    coco_1k_folds,
    format_table,
    recall_metrics,
)

__all__ = ["blocked_recall_metrics", "coco_1k_folds", "format_table", "recall_metrics"]
