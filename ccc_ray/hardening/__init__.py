"""Hardening a classifier with counterfeits: the losses and the reject-class widening (no Ray here)."""

from ccc_ray.hardening.losses import (
                                      balanced_class_weights,
                                      outlier_exposure_loss,
                                      reject_class_loss,
                                      uniform_cross_entropy,
)
from ccc_ray.hardening.widen import widen_classifier

__all__ = ["balanced_class_weights", "outlier_exposure_loss", "reject_class_loss", "uniform_cross_entropy",
           "widen_classifier"]
