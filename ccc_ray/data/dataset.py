"""The one data contract every source meets, and the seeded split.

Images are float32 in [0, 1], shape N x C x H x W; labels are int64 in [0, K); class names are K strings.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ccc_ray.errors import CccError


@dataclass
class ImageDataset:
    """A train/test pair of image tensors that meets the data contract (checked on construction)."""

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    class_names: list[str]

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            images, labels = getattr(self, f"{split}_images"), getattr(self, f"{split}_labels")
            check_images(images, f"data set {self.name!r} ({split} images)")
            if labels.dtype != torch.int64 or labels.ndim != 1 or len(labels) != len(images):
                raise CccError(f"data set {self.name!r}: {split} labels must be int64 of shape N={len(images)}")
            if len(labels) and (labels.min() < 0 or labels.max() >= len(self.class_names)):
                raise CccError(f"data set {self.name!r}: {split} labels must lie in [0, {len(self.class_names)})")
        if self.train_images.shape[1:] != self.test_images.shape[1:]:
            raise CccError(f"data set {self.name!r}: train and test images differ in shape")
        if len(self.train_images) == 0:
            raise CccError(f"data set {self.name!r} has no training images")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W)."""
        return tuple(self.train_images.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def check_images(images: torch.Tensor, what: str) -> None:
    """Raise a CccError unless `images` is float32 N x C x H x W within [0, 1]."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise CccError(f"{what}: expected a tensor of shape N x C x H x W, got {tuple(getattr(images, 'shape', ()))}")
    if images.dtype != torch.float32:
        raise CccError(f"{what}: expected float32 images, got {images.dtype}")
    if images.numel() and (images.min() < 0 or images.max() > 1):
        raise CccError(f"{what}: pixel values must lie in [0, 1]")


def split_indices(labels: torch.Tensor, test_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The stratified train/test split as sorted row indices (train, test): the same seed gives the same split
    on every machine, and only the labels are needed (a reader of a large source splits before it reads images)."""
    generator = torch.Generator().manual_seed(seed)
    train_index, test_index = [], []
    for label in labels.unique(sorted=True):
        members = torch.nonzero(labels == label).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        n_test = int(round(len(members) * test_fraction))
        test_index.append(members[:n_test])
        train_index.append(members[n_test:])
    return torch.cat(train_index).sort().values, torch.cat(test_index).sort().values


def seeded_split(images: torch.Tensor, labels: torch.Tensor, test_fraction: float,
                 seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stratified train/test split (`split_indices`) of the images and labels."""
    train, test = split_indices(labels, test_fraction, seed)
    return images[train], labels[train], images[test], labels[test]
