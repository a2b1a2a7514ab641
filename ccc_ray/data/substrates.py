"""Substrate images for the substrate conditional GAN (seed 003, Chaplygin & Chacksfield): the pictures a
generator paints a class onto.

Two origins:
- a folder of the user's images (`load_substrate_folder`), every image file under it, any size;
- offline defaults (`builtin_substrates`): scikit-learn's two bundled sample photographs (a temple in
  China, a flower) and four procedural textures (stripes, checks, rings, and a coloured garment-like shape
  on a white background, the paper's "blank piece of clothes" case), so the default run needs no download.

`SubstrateSet` turns those pictures into a data set of substrates of the data's size and channels: a random
square crop (so one photograph yields many substrates), resized, then the paper's augmentations: colour swap
(a random permutation of the colour axes), colour shift (one colour axis set to full intensity, only where
that loses no information: the number of distinct colours stays the same) and horizontal flip.

Contract: every image is float32 C x H x W in [0, 1]; item `i` of a set depends only on (seed, i), so any
shard of it is reproducible, and `source_id(i)` names it, e.g. "substrate:china.jpg#17".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ccc_ray.data.image_folder import IMAGE_SUFFIXES
from ccc_ray.errors import CccError

LUMINANCE = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class SubstratePicture:
    """One picture substrates are cut from: its name (for source ids) and its pixels, 3 x H x W float32 in [0, 1]."""

    name: str
    pixels: torch.Tensor


def load_substrate_folder(folder: str) -> list[SubstratePicture]:
    """Every image under `folder` (recursively, sorted by path), as RGB; a CccError for an empty folder or
    an unreadable file, naming it."""
    from PIL import Image, UnidentifiedImageError

    base = Path(folder)
    if not base.is_dir():
        raise CccError(f"substrate folder {folder!r} does not exist or is not a folder")
    paths = sorted(p for p in base.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise CccError(f"substrate folder {folder!r} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    pictures = []
    for path in paths:
        try:
            with Image.open(path) as image:
                array = np.asarray(image.convert("RGB"), dtype=np.uint8)
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError) as error:
            raise CccError(f"substrate {str(path)!r} is not a readable image ({error})") from None
        if min(array.shape[:2]) < 2:
            raise CccError(f"substrate {str(path)!r} is {array.shape[1]}x{array.shape[0]} pixels; need at least 2x2")
        pictures.append(SubstratePicture(str(path.relative_to(base)), _to_tensor(array)))
    return pictures


def builtin_substrates() -> list[SubstratePicture]:
    """scikit-learn's sample photographs and four procedural textures: substrates that ship offline."""
    from sklearn.datasets import load_sample_images

    bunch = load_sample_images()
    photos = [SubstratePicture(Path(name).name, _to_tensor(image)) for name, image in zip(bunch.filenames, bunch.images)]
    return photos + procedural_textures()


def procedural_textures(size: int = 256) -> list[SubstratePicture]:
    """Stripes, checks, rings and a garment-like shape on white: fixed pictures (no seed: they are data)."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * (7 * x + 3 * y))
    checks = ((np.floor(x * 8) + np.floor(y * 8)) % 2).astype(np.float32)
    rings = 0.5 + 0.5 * np.cos(2 * np.pi * 9 * np.hypot(x - 0.5, y - 0.45))

    def colour(field: np.ndarray, low: tuple[float, ...], high: tuple[float, ...]) -> np.ndarray:
        return np.stack([lo + (hi - lo) * field for lo, hi in zip(low, high)], axis=-1)

    body = (np.abs(x - 0.5) < 0.22) & (y > 0.25) & (y < 0.9)
    sleeves = (np.abs(x - 0.5) < 0.38) & (y > 0.25) & (y < 0.42)
    neck = np.hypot(x - 0.5, y - 0.25) < 0.08
    garment = (body | sleeves) & ~neck
    shirt = np.ones((size, size, 3), dtype=np.float32)
    shirt[garment] = (0.25, 0.35, 0.7)
    textures = {"stripes": colour(stripes, (0.1, 0.2, 0.5), (0.95, 0.9, 0.6)),
                "checks": colour(checks, (0.8, 0.1, 0.1), (0.95, 0.95, 0.95)),
                "rings": colour(rings, (0.1, 0.45, 0.15), (0.9, 0.85, 0.3)),
                "garment": shirt}
    return [SubstratePicture(f"{name}.png", torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))))
            for name, array in textures.items()]


def _to_tensor(array: np.ndarray) -> torch.Tensor:
    """H x W x 3 uint8 -> 3 x H x W float32 in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))).float().div_(255.0)


def colour_swap(image: torch.Tensor, order: list[int]) -> torch.Tensor:
    """Permute the colour axes of a 3 x H x W image: output axis k is input axis order[k]."""
    return image[list(order)]


def colour_shift(image: torch.Tensor, axis: int) -> torch.Tensor:
    """Set colour axis `axis` to full intensity where that loses nothing (the number of distinct colours,
    counted at 8 bits, stays the same); otherwise return the image unchanged."""
    shifted = image.clone()
    shifted[axis] = 1.0
    return shifted if distinct_colours(shifted) == distinct_colours(image) else image


def distinct_colours(image: torch.Tensor) -> int:
    """Number of distinct 8-bit RGB colours in a 3 x H x W image in [0, 1]."""
    codes = (image * 255).round().to(torch.int64)
    return int(torch.unique(codes[0] * 65536 + codes[1] * 256 + codes[2]).numel())


class SubstrateSet(torch.utils.data.Dataset):
    """`length` substrates of `image_shape` (C, H, W), cut from `pictures` and augmented; item i is
    (image C x H x W float32 in [0, 1], index of its picture as int64), a function of (seed, i) only."""

    def __init__(self, pictures: list[SubstratePicture], image_shape: tuple[int, int, int], length: int, seed: int,
                 min_crop: float = 0.25, colour_swap: bool = True, colour_shift: bool = True, flip: bool = True):
        if not pictures:
            raise CccError("substrates: no pictures to cut substrates from")
        channels = int(image_shape[0])
        if channels not in (1, 3):
            raise CccError(f"substrates: images must have 1 or 3 channels, got {channels}")
        if not 0 < min_crop <= 1:
            raise CccError(f"substrates: min_crop must lie in (0, 1], got {min_crop}")
        self.pictures = pictures
        self.image_shape = (channels, int(image_shape[1]), int(image_shape[2]))
        self.length = int(length)
        self.seed = int(seed)
        self.min_crop = min_crop
        self.augment = {"swap": colour_swap, "shift": colour_shift, "flip": flip}

    def __len__(self) -> int:
        return self.length

    def _draw(self, index: int) -> tuple[int, np.random.Generator]:
        rng = np.random.default_rng([self.seed, index])
        return int(rng.integers(len(self.pictures))), rng

    def source_id(self, index: int) -> str:
        return f"substrate:{self.pictures[self._draw(index)[0]].name}#{index}"

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < self.length:
            raise IndexError(index)
        which, rng = self._draw(index)
        picture = self.pictures[which].pixels
        _, height, width = self.image_shape
        # A crop with the output's aspect ratio, between min_crop and all of the picture's extent.
        fit = min(picture.shape[1] / height, picture.shape[2] / width)
        scale = fit * float(rng.uniform(self.min_crop, 1.0))
        crop_h, crop_w = max(1, round(height * scale)), max(1, round(width * scale))
        top = int(rng.integers(picture.shape[1] - crop_h + 1))
        left = int(rng.integers(picture.shape[2] - crop_w + 1))
        image = picture[:, top:top + crop_h, left:left + crop_w]
        if (crop_h, crop_w) != (height, width):
            image = F.interpolate(image[None], size=(height, width), mode="bilinear", antialias=True,
                                  align_corners=False)[0].clamp(0, 1)
        # Draw every augmentation's randomness whether or not it is on, so switching one off changes no other.
        swap, shift, flip = rng.random(3)
        order, axis = rng.permutation(3).tolist(), int(rng.integers(3))
        if self.augment["swap"] and swap < 0.5:
            image = colour_swap(image, order)
        if self.augment["shift"] and shift < 0.25:
            image = colour_shift(image, axis)
        if self.augment["flip"] and flip < 0.5:
            image = image.flip(-1)
        if self.image_shape[0] == 1:
            image = (image * torch.tensor(LUMINANCE).view(3, 1, 1)).sum(0, keepdim=True)
        return image.contiguous().float(), torch.tensor(which, dtype=torch.int64)

    def batch(self, indices: range | list[int]) -> tuple[torch.Tensor, list[str]]:
        """Items `indices` stacked (N x C x H x W) with their source ids."""
        indices = list(indices)
        images = torch.stack([self[i][0] for i in indices]) if indices else torch.empty(0, *self.image_shape)
        return images, [self.source_id(i) for i in indices]
