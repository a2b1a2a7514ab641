"""The one scalar a loss-weight search maximises, from the foundation issue's three acceptance figures.

    objective = kept_share
                - 0.5 * max(0, 2 - distance_ratio)     (too close to the training data)
                - max(0, 1 - min_diversity_ratio)      (a class less diverse than real data)

- kept_share: share of samples at confidence >= threshold on their target (uint8, as stored), in [0, 1];
- distance_ratio: mean L2 to the nearest training image, counterfeits over held-out test images; the
  penalty starts below 2 (the acceptance bar) and grows linearly: copies of the data score badly;
- min_diversity_ratio: the worst class's within-class mean pairwise distance, counterfeits over real
  images; the penalty starts below 1 (as diverse as real data) and reaches 1 at total collapse.
The maximum is 1 (every sample confident, far from the data, as diverse as the data).
"""

from __future__ import annotations

import torch

from ccc_ray.quality import dequantize, nearest_distances, per_class_diversity_ratio, quantize

DISTANCE_BAR = 2.0
DIVERSITY_BAR = 1.0


def objective_parts(kept_share: float, distance_ratio: float, min_diversity_ratio: float) -> dict[str, float]:
    distance_penalty = 0.5 * max(0.0, DISTANCE_BAR - distance_ratio)
    diversity_penalty = max(0.0, DIVERSITY_BAR - min_diversity_ratio)
    return {"kept_share": kept_share, "distance_ratio": distance_ratio, "min_diversity_ratio": min_diversity_ratio,
            "distance_penalty": distance_penalty, "diversity_penalty": diversity_penalty,
            "objective": kept_share - distance_penalty - diversity_penalty}


@torch.no_grad()
def generator_objective(method, classifier, dataset, per_class: int, threshold: float, seed: int,
                        device: torch.device | str = "cpu", test_distance: float | None = None) -> dict[str, float]:
    """Sample `per_class` images per class from `method`, and score them as `generate` would."""
    k = dataset.num_classes
    targets = torch.arange(k, device=device).repeat_interleave(per_class)
    images = dequantize(quantize(method.sample(targets, seed).cpu()))
    targets = targets.cpu()
    logits = classifier(images.to(device)).float().cpu()
    confidence = torch.softmax(logits, dim=1).gather(1, targets[:, None]).squeeze(1)
    kept = confidence >= threshold
    if test_distance is None:
        test_distance = float(nearest_distances(dataset.test_images, dataset.train_images).mean())
    if not kept.any():
        return objective_parts(0.0, 0.0, 0.0)
    distance = float(nearest_distances(images[kept], dataset.train_images).mean())
    diversity = per_class_diversity_ratio(images[kept], targets[kept], dataset.test_images, dataset.test_labels, k)
    return objective_parts(float(kept.double().mean()), distance / max(test_distance, 1e-12), min(diversity.values()))
