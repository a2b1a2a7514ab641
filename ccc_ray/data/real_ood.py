"""Real out-of-distribution images, built offline from data that ships inside installed wheels.

Two sets, both real images that belong to no class of a digits-like data set and need no download:
- `photo_patches`: random crops of scikit-learn's two bundled sample photographs (a temple in China and
  a flower), greyscale or RGB to match the data, resized to the data's size: natural-image texture;
- `letters`: Latin capital letters (no digit lookalikes such as O, I, S, Z, B, G) rendered with Pillow's
  bundled font, jittered in position, size and stroke, light on dark like the digits: the near-OOD case
  of handwriting-like strokes that are not digits.
Both are matched to the in-distribution value range ([0, 1], dark background) so that a detector cannot
win on brightness alone. Deterministic for a seed.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

LETTERS = "ACEFHJKLMNPRTUVWXY"


def photo_patches(image_shape: tuple[int, int, int], count: int, seed: int) -> torch.Tensor:
    from sklearn.datasets import load_sample_images

    channels, height, width = image_shape
    rng = np.random.default_rng(seed)
    photos = [torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
              for image in load_sample_images().images]
    patches = []
    for _ in range(count):
        photo = photos[rng.integers(len(photos))]
        size = int(rng.integers(24, 160))
        top = int(rng.integers(0, photo.shape[1] - size))
        left = int(rng.integers(0, photo.shape[2] - size))
        crop = photo[:, top:top + size, left:left + size][None]
        patches.append(F.interpolate(crop, size=(height, width), mode="bilinear", antialias=True,
                                     align_corners=False)[0])
    images = torch.stack(patches)
    if channels == 1:
        images = (images * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    # Stretch each patch to the full [0, 1] range, as the digits use it.
    low = images.amin(dim=(1, 2, 3), keepdim=True)
    high = images.amax(dim=(1, 2, 3), keepdim=True)
    return ((images - low) / (high - low).clamp_min(1e-6)).clamp(0, 1)


def letters(image_shape: tuple[int, int, int], count: int, seed: int) -> torch.Tensor:
    from PIL import Image, ImageDraw, ImageFont

    channels, height, width = image_shape
    rng = np.random.default_rng(seed)
    canvas = 64
    fonts = {size: ImageFont.load_default(size=size) for size in (50, 56, 62)}
    images = []
    for _ in range(count):
        letter = LETTERS[rng.integers(len(LETTERS))]
        font = fonts[(50, 56, 62)[rng.integers(3)]]
        image = Image.new("L", (canvas, canvas), 0)
        draw = ImageDraw.Draw(image)
        offset = rng.integers(-6, 7, size=2)
        draw.text((canvas / 2 + offset[0], canvas / 2 + offset[1]), letter, fill=255, font=font, anchor="mm",
                  stroke_width=int(rng.integers(2, 6)), stroke_fill=255)
        image = image.rotate(float(rng.uniform(-15, 15)), resample=Image.Resampling.BILINEAR)
        array = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)[None, None]
        images.append(F.interpolate(array, size=(height, width), mode="area")[0])
    result = torch.stack(images)
    return result.repeat(1, channels, 1, 1) if channels > 1 else result


def real_ood_images(image_shape: tuple[int, int, int], count: int, seed: int) -> dict[str, torch.Tensor]:
    """Named sets of `count` images each, N x C x H x W float32 in [0, 1]."""
    return {"photo_patches": photo_patches(image_shape, count, seed),
            "letters": letters(image_shape, count, seed + 1)}
