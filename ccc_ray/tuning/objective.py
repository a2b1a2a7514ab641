"""The one scalar a loss-weight search maximises, from the foundation issue's three acceptance figures.

    objective = kept_share
                - 0.5 * max(0, 2 - distance_ratio)     (too close to the training data)
                - max(0, 1 - min_diversity_ratio)      (a class less diverse than real data)

- kept_share: share of samples kept by the keep rule (confidence >= the bar on the stored uint8 image);
- distance_ratio: mean L2 to the nearest training image, counterfeits over held-out test images; the
  penalty starts below 2 (the acceptance bar) and grows linearly: copies of the data score badly;
- min_diversity_ratio: the worst class's within-class mean pairwise distance, counterfeits over real
  images; the penalty starts below 1 (as diverse as real data) and reaches 1 at total collapse.
The maximum is 1 (every sample confident, far from the data, as diverse as the data).
"""

from __future__ import annotations

import torch

from ccc_ray.counterfeits.keep import score_as_stored
from ccc_ray.counterfeits.quality import nearest_distances, per_class_diversity_ratio

DISTANCE_BAR = 2.0
DIVERSITY_BAR = 1.0


def objective_parts(kept_share: float, distance_ratio: float, min_diversity_ratio: float) -> dict[str, float]:
    distance_penalty = 0.5 * max(0.0, DISTANCE_BAR - distance_ratio)
    diversity_penalty = max(0.0, DIVERSITY_BAR - min_diversity_ratio)
    return {"kept_share": kept_share, "distance_ratio": distance_ratio, "min_diversity_ratio": min_diversity_ratio,
            "distance_penalty": distance_penalty, "diversity_penalty": diversity_penalty,
            "objective": kept_share - distance_penalty - diversity_penalty}


@torch.no_grad()
def generator_objective(method, classifier, dataset, per_class: int, confidence_bar: float, seed: int,
                        device: torch.device | str = "cpu", test_distance: float | None = None) -> dict[str, float]:
    """Sample `per_class` images per class from `method`, judge them by the keep rule as `generate` would."""
    k = dataset.num_classes
    targets = torch.arange(k).repeat_interleave(per_class)
    scored = score_as_stored(method.sample_with_lineage(targets, seed, dataset).images, targets, classifier,
                             confidence_bar, device)
    kept = scored.kept
    if test_distance is None:
        test_distance = float(nearest_distances(dataset.test_images, dataset.train_images).mean())
    if not kept.any():
        return objective_parts(0.0, 0.0, 0.0)
    images = scored.images
    distance = float(nearest_distances(images[kept], dataset.train_images).mean())
    diversity = per_class_diversity_ratio(images[kept], targets[kept], dataset.test_images, dataset.test_labels, k)
    return objective_parts(float(kept.double().mean()), distance / max(test_distance, 1e-12), min(diversity.values()))
