"""Image data sets behind one contract: float32 N x C x H x W in [0, 1], int64 labels, class names."""

from ccc_ray.data.dataset import ImageDataset, check_images, seeded_split
from ccc_ray.data.sources import SOURCES, DataConfig, load_dataset

__all__ = ["DataConfig", "ImageDataset", "SOURCES", "check_images", "load_dataset", "seeded_split"]
