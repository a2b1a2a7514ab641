"""Sample counterfeits, quantize them as stored, re-score the stored images, keep the confident ones, write Parquet.

Confidence is measured on the uint8 image that is written, not the float output of the generator, so
every stored row is a counterfeit at the stated confidence when read back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ccc_ray.classifiers.training import predict_logits
from ccc_ray.data.dataset import ImageDataset
from ccc_ray.errors import CccError
from ccc_ray.quality import (
    dequantize,
    nearest_distances,
    per_class_diversity_ratio,
    quantize,
)
from ccc_ray.storage import atomic_write_bytes
from ccc_ray.store.writer import CounterfeitWriter, counterfeit_batch

DIVERSITY_SAMPLE_PER_CLASS = 200


@dataclass
class GenerateReport:
    """What a generate run produced, with the acceptance figures of the foundation issue."""

    store_file: str
    sampled: int
    kept: int
    kept_share_per_class: dict[int, float]
    mean_nearest_train_l2: float
    test_mean_nearest_train_l2: float
    diversity_ratio_per_class: dict[int, float] = field(default_factory=dict)

    @property
    def kept_share(self) -> float:
        return self.kept / max(self.sampled, 1)

    @property
    def distance_ratio(self) -> float:
        return self.mean_nearest_train_l2 / max(self.test_mean_nearest_train_l2, 1e-12)

    def to_dict(self) -> dict:
        return {"store_file": self.store_file, "sampled": self.sampled, "kept": self.kept,
                "kept_share": self.kept_share, "kept_share_per_class": self.kept_share_per_class,
                "mean_nearest_train_l2": self.mean_nearest_train_l2,
                "test_mean_nearest_train_l2": self.test_mean_nearest_train_l2,
                "distance_ratio": self.distance_ratio, "diversity_ratio_per_class": self.diversity_ratio_per_class}


def generate_counterfeits(method, classifier, classifier_sha256: str, dataset: ImageDataset, *, store_dir: Path,
                          run_id: str, per_class: int, threshold: float, seed: int, batch_size: int,
                          run_metadata: dict, device: torch.device | str = "cpu",
                          progress: bool = True) -> GenerateReport:
    """Sample `per_class` images per class, keep those at >= `threshold`, stream them into the store."""
    if not 0 < threshold <= 1:
        raise CccError(f"generate.threshold: must lie in (0, 1], got {threshold}")
    k = dataset.num_classes
    targets_all = torch.arange(k).repeat_interleave(per_class)
    kept_per_class = np.zeros(k, dtype=np.int64)
    kept_images, kept_targets, kept_distances = [], [], []
    with CounterfeitWriter(store_dir, method.name, run_id, run_metadata, dataset.class_names) as writer, \
            tqdm(total=len(targets_all), desc="generate", unit="img", disable=not progress) as bar:
        for chunk, start in enumerate(range(0, len(targets_all), batch_size)):
            targets = targets_all[start:start + batch_size]
            stored = quantize(method.sample(targets, seed * 100_003 + chunk).cpu())
            images = dequantize(stored)
            probabilities = torch.softmax(predict_logits(classifier, images, device), dim=1)
            confidence = probabilities.gather(1, targets[:, None]).squeeze(1)
            keep = confidence >= threshold
            distances = nearest_distances(images[keep], dataset.train_images)
            index = torch.arange(start, start + len(targets))[keep]
            writer.write(counterfeit_batch(
                stored[keep].permute(0, 2, 3, 1).numpy(), targets[keep].numpy(),
                probabilities[keep].argmax(1).numpy(), confidence[keep].numpy(), distances.numpy(), index.numpy(),
                run_id=run_id, method=method.name, classifier_sha256=classifier_sha256, seed=seed))
            # The diversity figure needs only a bounded sample per class: memory stays flat at any size.
            retain = keep & torch.from_numpy(kept_per_class < DIVERSITY_SAMPLE_PER_CLASS)[targets]
            np.add.at(kept_per_class, targets[keep].numpy(), 1)
            kept_images.append(images[retain])
            kept_targets.append(targets[retain])
            kept_distances.append(distances)
            bar.update(len(targets))
        if not kept_per_class.any():  # raising inside the writer's block aborts it: no empty store file
            raise CccError(f"generate: none of {len(targets_all)} samples reached confidence {threshold}; "
                           "train the generator longer (--generator.steps) or lower --generate.threshold")
    kept = torch.cat(kept_images)
    kept_t = torch.cat(kept_targets)
    distances = torch.cat(kept_distances)
    test_distance = float(nearest_distances(dataset.test_images, dataset.train_images).mean())
    return GenerateReport(
        store_file=str(writer.path), sampled=len(targets_all), kept=int(kept_per_class.sum()),
        kept_share_per_class={c: float(kept_per_class[c] / per_class) for c in range(k)},
        mean_nearest_train_l2=float(distances.mean()) if len(distances) else float("nan"),
        test_mean_nearest_train_l2=test_distance,
        diversity_ratio_per_class=per_class_diversity_ratio(kept, kept_t, dataset.test_images,
                                                            dataset.test_labels, k))


def write_report(report: GenerateReport, path: Path) -> None:
    atomic_write_bytes(path, json.dumps(report.to_dict(), indent=2).encode())
