"""The two hardening losses: a reject class, and outlier exposure.

Reject class (Nguyen et al., "Deep Neural Networks are Easily Fooled", 2015, retraining with a
"fooling images" class; Suhail et al., "Network Inversion for Uncertainty-Aware OOD Detection", 2025,
with class-weighted cross-entropy): the classifier gets K + 1 outputs and counterfeits carry label K.

Outlier exposure (Hendrycks, Mazeika & Dietterich, "Deep Anomaly Detection with Outlier Exposure",
ICLR 2019): the usual cross-entropy on in-distribution images plus lambda times the cross-entropy from
the model's softmax to the uniform distribution over the K classes on outliers; lambda = 0.5 for vision.

Contract: logits float N x K (N x (K + 1) for the reject class), targets int64 N; losses are scalars.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ccc_ray.errors import CccError


def balanced_class_weights(class_counts: torch.Tensor) -> torch.Tensor:
    """Inverse-frequency weights n / (C * n_c) for C classes, 0 for a class with no samples.

    Why: counterfeits pile up round after round (the network-inversion loop adds every epoch's inverted
    samples to the garbage class), so with plain cross-entropy the reject class would soon outweigh every
    real class and the model would learn to reject. With these weights each class present, the reject
    class included, carries the same total weight as one average real class, however many counterfeits
    there are. Count over the training set once (not per batch) so the weights stay fixed across steps.
    """
    counts = torch.as_tensor(class_counts, dtype=torch.float64)
    if counts.dim() != 1 or counts.numel() < 2 or bool((counts < 0).any()):
        raise CccError(f"class counts must be a vector of at least 2 non-negative counts, got {counts.tolist()}")
    present = counts > 0
    if not bool(present.any()):
        raise CccError("class counts are all zero: there is nothing to train on")
    weights = torch.zeros_like(counts)
    weights[present] = counts.sum() / (int(present.sum()) * counts[present])
    return weights.float()


def reject_class_loss(logits: torch.Tensor, targets: torch.Tensor, class_weights: torch.Tensor) -> torch.Tensor:
    """Class-weighted cross-entropy over K + 1 outputs; counterfeits carry label K (the last output).

    `class_weights` (K + 1) usually comes from `balanced_class_weights` over the training set's counts.
    The mean is weighted (PyTorch divides by the summed weights of the batch's targets), so only the
    ratios between the weights matter.
    """
    if logits.dim() != 2 or logits.shape[1] < 3:
        raise CccError(f"reject_class_loss: logits must be N x (K + 1) with K >= 2, got {tuple(logits.shape)}")
    if targets.shape != logits.shape[:1]:
        raise CccError(f"reject_class_loss: {logits.shape[0]} rows of logits but targets of shape "
                       f"{tuple(targets.shape)}")
    if class_weights.shape != (logits.shape[1],):
        raise CccError(f"reject_class_loss: need {logits.shape[1]} class weights (K classes and the reject "
                       f"class), got shape {tuple(class_weights.shape)}")
    return F.cross_entropy(logits, targets, weight=class_weights.to(logits.device, logits.dtype))


def uniform_cross_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean over rows of the cross-entropy from the softmax of N x K logits to the uniform 1/K.

    Equals -(1/K) sum_k log softmax_k = logsumexp(logits) - mean(logits) (Hendrycks et al.'s code);
    its minimum, log K, is reached by a uniform softmax, where its gradient vanishes.
    """
    return (torch.logsumexp(logits, dim=1) - logits.mean(dim=1)).mean()


def outlier_exposure_loss(in_logits: torch.Tensor, in_targets: torch.Tensor, outlier_logits: torch.Tensor,
                          outlier_weight: float = 0.5) -> torch.Tensor:
    """Cross-entropy on in-distribution images + `outlier_weight` (lambda) * uniform cross-entropy on outliers.

    Hendrycks et al. fine-tune with outlier batches twice the size of the in-distribution batch; an empty
    outlier batch leaves the plain cross-entropy.
    """
    if in_logits.dim() != 2 or outlier_logits.dim() != 2 or in_logits.shape[1] != outlier_logits.shape[1]:
        raise CccError(f"outlier_exposure_loss: in-distribution and outlier logits must both be N x K with "
                       f"the same K, got {tuple(in_logits.shape)} and {tuple(outlier_logits.shape)}")
    if outlier_weight < 0:
        raise CccError(f"outlier_exposure_loss: outlier_weight must be >= 0, got {outlier_weight}")
    loss = F.cross_entropy(in_logits, in_targets)
    if outlier_logits.shape[0] == 0:
        return loss
    return loss + outlier_weight * uniform_cross_entropy(outlier_logits)
