"""A defect data set with true masks, derived from real digits: evaluation data for saliency maps.

Seed 002's paper scores its counterfactual masks by IoU against crack segmentations while training on
image labels only. We have no crack photographs offline, so we make the same kind of task from any
`ImageDataset` (the embedded 8x8 digits by default; any H x W works, e.g. 28x28 MNIST): half the images
get a bright stroke (a thick line segment) or blob (a disc) drawn on them at a random place. Labels are
image-level only, 0 = clean and 1 = defective; the true mask is where the drawing visibly changed the
image (drawn, and brighter by at least `MIN_CHANGE`), since a defect drawn over an existing bright stroke
cannot be seen by anyone.

Sizes scale with the image: stroke half-width 6% of the side (at least 0.7 px), length 30-60%; blob
radius 8-15% (at least 1 px). Deterministic for a seed. Images float32 N x C x H x W in [0, 1]; masks
bool N x H x W.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ccc_ray.data.dataset import ImageDataset, check_images
from ccc_ray.errors import CccError

CLASS_NAMES = ["clean", "defective"]
MIN_CHANGE = 0.25  # a pixel brightened by less than this is not part of the true mask
MIN_PIXELS = 3  # a defect must visibly change at least this many pixels, else it is drawn again


@dataclass
class DefectData:
    """The clean/defective `ImageDataset` and the true masks of both splits (all-False for clean images)."""

    dataset: ImageDataset
    train_masks: torch.Tensor  # bool N_train x H x W
    test_masks: torch.Tensor  # bool N_test x H x W


def _segment_distance(rows: torch.Tensor, cols: torch.Tensor, start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """Distance of every pixel centre (rows, cols: H x W) to the segment start-end (points as (row, col))."""
    direction = end - start
    length2 = direction.pow(2).sum().clamp_min(1e-9)
    t = (((rows - start[0]) * direction[0] + (cols - start[1]) * direction[1]) / length2).clamp(0, 1)
    return ((rows - start[0] - t * direction[0]).pow(2) + (cols - start[1] - t * direction[1]).pow(2)).sqrt()


def draw_defect(height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """Intensity H x W in [0, 1] of one stroke or blob at a random place (anti-aliased by one pixel)."""
    side = min(height, width)
    rows, cols = torch.meshgrid(torch.arange(height, dtype=torch.float32) + 0.5,
                                torch.arange(width, dtype=torch.float32) + 0.5, indexing="ij")
    uniform = lambda low, high: float(low + (high - low) * torch.rand((), generator=generator))  # noqa: E731
    centre = torch.tensor([uniform(0, height), uniform(0, width)])
    if torch.rand((), generator=generator) < 0.5:  # stroke
        angle = uniform(0, torch.pi)
        half = 0.5 * uniform(0.3, 0.6) * side
        offset = torch.tensor([half * torch.sin(torch.tensor(angle)), half * torch.cos(torch.tensor(angle))])
        distance = _segment_distance(rows, cols, centre - offset, centre + offset)
        radius = max(0.7, 0.06 * side)
    else:  # blob
        distance = ((rows - centre[0]).pow(2) + (cols - centre[1]).pow(2)).sqrt()
        radius = max(1.0, uniform(0.08, 0.15) * side)
    return (radius + 0.5 - distance).clamp(0, 1)


def add_defects(images: torch.Tensor, defective: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one defect on every image where `defective` (bool N) is set: (images, bool masks N x H x W)."""
    check_images(images, "defect source images")
    generator = torch.Generator().manual_seed(seed)
    out = images.clone()
    masks = torch.zeros(len(images), *images.shape[2:], dtype=torch.bool)
    brightness = 0.9  # about the digits' stroke brightness, so the defect is a stroke-like mark
    for i in torch.nonzero(defective).flatten().tolist():
        for _ in range(20):  # redraw a defect hidden by the digit's own strokes
            intensity = draw_defect(images.shape[2], images.shape[3], generator)
            drawn = torch.max(images[i], brightness * intensity)  # broadcast over channels
            mask = (intensity >= 0.5) & ((drawn - images[i]).amax(dim=0) >= MIN_CHANGE)
            if int(mask.sum()) >= MIN_PIXELS:
                break
        out[i], masks[i] = drawn, mask
    return out, masks


def defect_data(source: ImageDataset, seed: int = 0, defective_share: float = 0.5) -> DefectData:
    """Clean/defective versions of `source`'s train and test images (its digit labels are dropped)."""
    if not 0 < defective_share < 1:
        raise CccError(f"defect_data: defective_share must lie in (0, 1), got {defective_share}")
    generator = torch.Generator().manual_seed(seed)
    splits = {}
    for offset, split in enumerate(("train", "test")):
        images = getattr(source, f"{split}_images")
        labels = (torch.rand(len(images), generator=generator) < defective_share).long()
        drawn, masks = add_defects(images, labels.bool(), seed * 2 + offset + 1)
        splits[split] = (drawn, labels, masks)
    dataset = ImageDataset(f"{source.name}-defects", splits["train"][0], splits["train"][1], splits["test"][0],
                           splits["test"][1], list(CLASS_NAMES))
    return DefectData(dataset, splits["train"][2], splits["test"][2])
