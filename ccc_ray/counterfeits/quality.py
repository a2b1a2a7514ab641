"""The figures that say whether counterfeits are confident, far from the data, and diverse."""

from __future__ import annotations

import torch


def quantize(images: torch.Tensor) -> torch.Tensor:
    """float [0, 1] -> uint8 exactly as stored (round half to even, clamped)."""
    return images.clamp(0, 1).mul(255).round().to(torch.uint8)


def dequantize(images_uint8: torch.Tensor) -> torch.Tensor:
    return images_uint8.float().div(255)


def nearest_distances(queries: torch.Tensor, references: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    """L2 distance (flattened pixels in [0, 1]) from each query to its nearest reference image."""
    refs = references.flatten(1).float()
    out = []
    for i in range(0, len(queries), chunk):
        out.append(torch.cdist(queries[i:i + chunk].flatten(1).float(), refs).min(dim=1).values)
    return torch.cat(out) if out else torch.empty(0)


def mean_pairwise_distance(images: torch.Tensor) -> float:
    """Mean L2 distance over distinct pairs: the within-set diversity figure."""
    if len(images) < 2:
        return 0.0
    flat = images.flatten(1).float()
    distances = torch.cdist(flat, flat)
    n = len(flat)
    return float(distances.sum() / (n * (n - 1)))


def per_class_diversity_ratio(counterfeits: torch.Tensor, targets: torch.Tensor, real: torch.Tensor,
                              labels: torch.Tensor, num_classes: int) -> dict[int, float]:
    """For each class: mean pairwise distance of its counterfeits / that of its real images."""
    ratios = {}
    for k in range(num_classes):
        fake_k, real_k = counterfeits[targets == k], real[labels == k]
        base = mean_pairwise_distance(real_k)
        ratios[k] = mean_pairwise_distance(fake_k) / base if base > 0 and len(fake_k) > 1 else 0.0
    return ratios
