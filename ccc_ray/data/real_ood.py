"""Real out-of-distribution images, built offline from data that ships inside installed wheels.

Two sets, both real images that belong to no class of a digits-like data set and need no download:
- `photo_patches`: random crops of scikit-learn's two bundled sample photographs (a temple in China and
  a flower), greyscale or RGB to match the data, resized to the data's size: natural-image texture;
- `letters`: Latin capital letters (no digit lookalikes such as O, I, S, Z, B, G) rendered with Pillow's
  bundled font, jittered in position, size and stroke, light on dark like the digits: the near-OOD case
  of handwriting-like strokes that are not digits.
Both are matched to the in-distribution value range ([0, 1], dark background) so that a detector cannot
win on brightness alone. Deterministic for a seed. Each set is drawn as a plan (a few numbers per image)
then rendered image by image, so a large set can be rendered in slices, anywhere, to the same pixels.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

LETTERS = "ACEFHJKLMNPRTUVWXY"


def _photos() -> list[torch.Tensor]:
    from sklearn.datasets import load_sample_images

    return [torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
            for image in load_sample_images().images]


def photo_patch_plan(count: int, seed: int) -> np.ndarray:
    """The random choices of `photo_patches`, int64 count x 4 (photo, crop size, top, left): a few numbers per
    image, so that any slice of the set can be rendered elsewhere (`render_photo_patches`) to the same pixels."""
    from sklearn.datasets import load_sample_images

    heights_widths = [np.asarray(image).shape[:2] for image in load_sample_images().images]
    rng = np.random.default_rng(seed)
    plan = np.empty((count, 4), np.int64)
    for row in range(count):
        photo = int(rng.integers(len(heights_widths)))
        height, width = heights_widths[photo]
        size = int(rng.integers(24, 160))
        plan[row] = photo, size, int(rng.integers(0, height - size)), int(rng.integers(0, width - size))
    return plan


def render_photo_patches(plan: np.ndarray, image_shape: tuple[int, int, int]) -> torch.Tensor:
    """The patches of `plan` rows (`photo_patch_plan`), N x C x H x W float32 in [0, 1]; each image depends
    on its own row only, so a slice renders exactly the images of the whole set at those rows."""
    channels, height, width = image_shape
    photos = _photos()
    patches = []
    for photo, size, top, left in plan.tolist():
        crop = photos[photo][:, top:top + size, left:left + size][None]
        patches.append(F.interpolate(crop, size=(height, width), mode="bilinear", antialias=True,
                                     align_corners=False)[0])
    images = torch.stack(patches)
    if channels == 1:
        images = (images * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    # Stretch each patch to the full [0, 1] range, as the digits use it.
    low = images.amin(dim=(1, 2, 3), keepdim=True)
    high = images.amax(dim=(1, 2, 3), keepdim=True)
    return ((images - low) / (high - low).clamp_min(1e-6)).clamp(0, 1)


def photo_patches(image_shape: tuple[int, int, int], count: int, seed: int) -> torch.Tensor:
    return render_photo_patches(photo_patch_plan(count, seed), image_shape)


FONT_SIZES = (50, 56, 62)


def letter_plan(count: int, seed: int) -> np.ndarray:
    """The random choices of `letters`, float64 count x 6 (letter, font size index, x and y offset, stroke
    width, rotation in degrees), for `render_letters` (see `photo_patch_plan`)."""
    rng = np.random.default_rng(seed)
    plan = np.empty((count, 6), np.float64)
    for row in range(count):
        letter = int(rng.integers(len(LETTERS)))
        font = int(rng.integers(len(FONT_SIZES)))
        offset = rng.integers(-6, 7, size=2)
        stroke = int(rng.integers(2, 6))
        plan[row] = letter, font, offset[0], offset[1], stroke, float(rng.uniform(-15, 15))
    return plan


def render_letters(plan: np.ndarray, image_shape: tuple[int, int, int]) -> torch.Tensor:
    """The letters of `plan` rows (`letter_plan`), N x C x H x W float32 in [0, 1], each from its own row."""
    from PIL import Image, ImageDraw, ImageFont

    channels, height, width = image_shape
    canvas = 64
    fonts = [ImageFont.load_default(size=size) for size in FONT_SIZES]
    images = []
    for letter, font, offset_x, offset_y, stroke, angle in plan.tolist():
        image = Image.new("L", (canvas, canvas), 0)
        draw = ImageDraw.Draw(image)
        draw.text((canvas / 2 + offset_x, canvas / 2 + offset_y), LETTERS[int(letter)], fill=255,
                  font=fonts[int(font)], anchor="mm", stroke_width=int(stroke), stroke_fill=255)
        image = image.rotate(angle, resample=Image.Resampling.BILINEAR)
        array = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)[None, None]
        images.append(F.interpolate(array, size=(height, width), mode="area")[0])
    result = torch.stack(images)
    return result.repeat(1, channels, 1, 1) if channels > 1 else result


def letters(image_shape: tuple[int, int, int], count: int, seed: int) -> torch.Tensor:
    return render_letters(letter_plan(count, seed), image_shape)


# name -> (plan of the random choices, renderer of plan rows): `real_ood_images` in slices, for Ray Data.
REAL_OOD_SETS = {"photo_patches": (photo_patch_plan, render_photo_patches),
                 "letters": (letter_plan, render_letters)}
REAL_OOD_SEED_OFFSETS = {"photo_patches": 0, "letters": 1}


def real_ood_plans(count: int, seed: int) -> dict[str, np.ndarray]:
    """The plan of each set of `real_ood_images`: render a slice of it with `render_real_ood`."""
    return {name: plan(count, seed + REAL_OOD_SEED_OFFSETS[name]) for name, (plan, _) in REAL_OOD_SETS.items()}


def render_real_ood(name: str, plan: np.ndarray, image_shape: tuple[int, int, int]) -> torch.Tensor:
    return REAL_OOD_SETS[name][1](plan, image_shape)


def real_ood_images(image_shape: tuple[int, int, int], count: int, seed: int) -> dict[str, torch.Tensor]:
    """Named sets of `count` images each, N x C x H x W float32 in [0, 1]."""
    return {name: render_real_ood(name, plan, image_shape) for name, plan in real_ood_plans(count, seed).items()}
