"""Every image source behind one function, `load_dataset(DataConfig)`, returning an ImageDataset."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ccc_ray.config import option, validate_config
from ccc_ray.data.dataset import ImageDataset, seeded_split
from ccc_ray.errors import CccError

# Sources that ship inside an installed wheel and so need no `root`.
EMBEDDED = ("digits", "mnist_5k")
SOURCES = ("digits", "mnist_5k", "mnist", "fashion_mnist", "cifar10", "svhn", "image_folder", "parquet")


@dataclass
class DataConfig:
    name: str = option("digits", f"data set: {' | '.join(SOURCES)} (mnist_5k brings its own run id and "
                                 "training budget, under the file and the flags: README)")
    root: str | None = option(None, "local folder (torchvision sets, image_folder) or Parquet file/folder")
    download: bool = option(False, "torchvision sets only: download into root if missing")
    test_fraction: float = option(0.2, "share held out for testing where the source has no test split", gt=0, lt=1)
    split_seed: int = option(0, "seed of the train/test split")
    image_size: int | None = option(None, "resize every image to this square size (default: the source's own)",
                                    ge=4)
    channels: int | None = option(None, "1 (grey) or 3 (RGB); default: the source's own (image_folder: the first image's)")

    def validate(self) -> None:
        if self.name not in SOURCES:
            raise CccError(f"data.name: unknown data set {self.name!r}; choose one of {', '.join(SOURCES)}")
        if self.name not in EMBEDDED and not self.root:
            raise CccError(f"data.root: data set {self.name!r} needs a local root folder or file")
        if self.channels not in (None, 1, 3):
            raise CccError(f"data.channels: must be 1 or 3, got {self.channels}")


def load_dataset(config: DataConfig) -> ImageDataset:
    """Load and split the configured source; the same config gives the same tensors everywhere."""
    validate_config(config, "data.")
    name = config.name
    if name == "digits":
        from ccc_ray.data.digits import load_digits_arrays

        images, labels, names = load_digits_arrays()
    elif name == "mnist_5k":
        from ccc_ray.data.mnist_5k import load_mnist_5k_arrays

        images, labels, names = load_mnist_5k_arrays()
    elif name == "image_folder":
        from ccc_ray.data.image_folder import load_image_folder

        images, labels, names = load_image_folder(config.root, config.image_size, config.channels)
    elif name == "parquet":
        from ccc_ray.data.parquet_images import load_parquet_images

        images, labels, names = load_parquet_images(config.root)
    else:
        from ccc_ray.data.torchvision_sets import load_torchvision_split

        train = load_torchvision_split(name, config.root, True, config.download)
        test = load_torchvision_split(name, config.root, False, config.download)
        return ImageDataset(name, conform(train[0], config), train[1], conform(test[0], config), test[1], train[2])
    images = conform(images, config)
    return ImageDataset(name, *seeded_split(images, labels, config.test_fraction, config.split_seed), names)


def conform(images: torch.Tensor, config: DataConfig) -> torch.Tensor:
    """Apply `image_size` and `channels` to any source (grey <-> RGB by luminance or repetition)."""
    if config.channels is not None and images.shape[1] != config.channels:
        if config.channels == 1:
            weights = torch.tensor([0.299, 0.587, 0.114], dtype=images.dtype).view(1, 3, 1, 1)
            images = (images * weights).sum(1, keepdim=True)
        else:
            images = images.repeat(1, 3, 1, 1)
    if config.image_size is not None and tuple(images.shape[2:]) != (config.image_size, config.image_size):
        images = torch.nn.functional.interpolate(images, size=(config.image_size, config.image_size),
                                                 mode="bilinear", antialias=True, align_corners=False)
        images = images.clamp(0, 1)
    return images.contiguous()


def conformed_shape(image_shape: tuple[int, int, int], config: DataConfig) -> tuple[int, int, int]:
    """The (C, H, W) that `conform` gives images of `image_shape`."""
    channels, height, width = image_shape
    side = config.image_size
    return (config.channels or channels, side or height, side or width)
