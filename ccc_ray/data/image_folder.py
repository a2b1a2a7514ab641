"""An ImageFolder tree (`root/<class>/<image>`), resized to one shape and loaded into memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ccc_ray.errors import CccError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def load_image_folder(root: str, image_size: int | None, channels: int | None
                      ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """All images under `root` as N x C x S x S float32 in [0, 1]; classes are the sorted sub-folders.

    Without `image_size` every image must already have the size of the first; without `channels`
    the channel count follows the first image (1 for grey, 3 otherwise).
    """
    from PIL import Image, UnidentifiedImageError

    base = Path(root)
    if not base.is_dir():
        raise CccError(f"data.root: image folder {root!r} does not exist")
    class_dirs = sorted(p for p in base.iterdir() if p.is_dir())
    if not class_dirs:
        raise CccError(f"data.root: {root!r} has no class sub-folders (expected root/<class>/<image>)")
    arrays, labels = [], []
    mode, size = None, None
    for label, class_dir in enumerate(class_dirs):
        for path in sorted(class_dir.rglob("*")):
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(path) as img:
                    if mode is None:
                        mode = {1: "L", 3: "RGB"}.get(channels or 0) or ("L" if img.mode in ("L", "1", "I;16") else "RGB")
                        size = (image_size, image_size) if image_size else img.size
                    img = img.convert(mode)
                    if img.size != size:
                        if not image_size:
                            raise CccError(f"data.root: {path} is {img.size[0]}x{img.size[1]}, the first image "
                                           f"was {size[0]}x{size[1]}; set --data.image_size to resize all")
                        img = img.resize(size, Image.BILINEAR)
                    arrays.append(np.asarray(img, dtype=np.uint8))
            except (UnidentifiedImageError, Image.DecompressionBombError, OSError) as error:
                raise CccError(f"data.root: {path} is not a readable image ({error})") from None
            labels.append(label)
    if not arrays:
        raise CccError(f"data.root: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {root!r}")
    stacked = np.stack(arrays)
    images = torch.from_numpy(stacked).float().div_(255.0)
    images = images.unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2).contiguous()
    return images, torch.tensor(labels, dtype=torch.int64), [d.name for d in class_dirs]
