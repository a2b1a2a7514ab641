"""OOD scores (functions of logits, higher = more in-distribution) and the metrics that judge them."""

from ccc_ray.ood.metrics import (
    OODMetrics,
    acceptance_threshold,
    clean_accuracy,
    ood_metrics,
)
from ccc_ray.ood.scores import OOD_SCORES, ood_score

__all__ = ["OODMetrics", "OOD_SCORES", "acceptance_threshold", "clean_accuracy", "ood_metrics", "ood_score"]
