"""Hardening a classifier with counterfeits: the losses and the adaptive attackers (no Ray here; the
reject-class widening and the data guard are classifier transforms, in `ccc_ray.classifiers`)."""

from ccc_ray.hardening.adaptive import AdaptiveOutliers, pgd_toward_classes
from ccc_ray.hardening.losses import (
                                      balanced_class_weights,
                                      outlier_exposure_loss,
                                      reject_class_loss,
                                      uniform_cross_entropy,
)

__all__ = ["AdaptiveOutliers", "balanced_class_weights", "pgd_toward_classes", "outlier_exposure_loss", "reject_class_loss", "uniform_cross_entropy"]
