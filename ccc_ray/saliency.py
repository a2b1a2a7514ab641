"""Saliency maps and how well they find a known region: mask IoU, and two baselines for seed 002's masks.

- `mask_iou`: intersection over union of predicted and true binary masks, per image (1 when both are empty);
- `gradient_saliency`: Simonyan et al., "Deep Inside Convolutional Networks" (2014): |d logit_c / d x|,
  the largest over channels, per image scaled to [0, 1] (c = the class to explain);
- `random_saliency`: uniform noise, the floor any method must beat;
- `calibrated_iou`: one threshold per method, picked on calibration images, then applied to test images,
  so no method sees the test masks (the true area would be a leak).

Saliency maps are float32 N x H x W in [0, 1], higher = more salient; masks bool N x H x W.
"""

from __future__ import annotations

import torch
from torch import nn

from ccc_ray.errors import CccError

THRESHOLDS = tuple(i / 20 for i in range(1, 20))  # 0.05 .. 0.95


def mask_iou(predicted: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """IoU per image of two bool N x H x W masks (float N; 1.0 where both are empty)."""
    if predicted.shape != truth.shape or predicted.dim() != 3:
        raise CccError(f"mask_iou: masks must both be N x H x W, got {tuple(predicted.shape)} and {tuple(truth.shape)}")
    predicted, truth = predicted.bool(), truth.bool()
    intersection = (predicted & truth).flatten(1).sum(1).float()
    union = (predicted | truth).flatten(1).sum(1).float()
    return torch.where(union > 0, intersection / union.clamp_min(1), torch.ones_like(union))


def gradient_saliency(model: nn.Module, images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """|d logit_class / d image|, max over channels, each map scaled so its largest value is 1 (N x H x W)."""
    was_training = model.training
    model.eval()
    try:
        inputs = images.clone().requires_grad_(True)
        logits = model(inputs)
        (gradient,) = torch.autograd.grad(logits.gather(1, classes[:, None].to(logits.device)).sum(), inputs)
    finally:
        model.train(was_training)
    saliency = gradient.abs().amax(dim=1)
    return (saliency / saliency.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]).detach()


def random_saliency(shape: tuple[int, int, int], seed: int) -> torch.Tensor:
    """Uniform noise N x H x W: a saliency map that knows nothing."""
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def best_threshold(saliency: torch.Tensor, truth: torch.Tensor, thresholds=THRESHOLDS) -> float:
    """The threshold of `thresholds` with the highest mean IoU of (saliency >= t) against `truth`."""
    scores = [float(mask_iou(saliency >= t, truth).mean()) for t in thresholds]
    return float(thresholds[max(range(len(thresholds)), key=scores.__getitem__)])


def calibrated_iou(calibration: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor],
                   thresholds=THRESHOLDS) -> dict[str, float]:
    """Mean test IoU at the threshold that was best on the calibration (saliency, truth) pair."""
    threshold = best_threshold(*calibration, thresholds)
    saliency, truth = test
    return {"threshold": threshold, "iou": float(mask_iou(saliency >= threshold, truth).mean())}
