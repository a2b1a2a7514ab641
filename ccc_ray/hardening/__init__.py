"""Hardening a classifier with counterfeits: the losses, the reject-class widening and the adaptive
attackers (no Ray here)."""

from ccc_ray.hardening.adaptive import AdaptiveOutliers, pgd_toward_classes
from ccc_ray.hardening.losses import (
                                      balanced_class_weights,
                                      outlier_exposure_loss,
                                      reject_class_loss,
                                      uniform_cross_entropy,
)
from ccc_ray.hardening.widen import widen_classifier

__all__ = ["AdaptiveOutliers", "balanced_class_weights", "pgd_toward_classes", "outlier_exposure_loss", "reject_class_loss", "uniform_cross_entropy",
           "widen_classifier"]
