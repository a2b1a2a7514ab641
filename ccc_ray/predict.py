"""`ccc-ray predict MODEL.onnx IMAGES...`: class, confidence and OOD flag per image, from the ONNX export.

Inputs are image files, folders of images (searched recursively) or Parquet counterfeit stores. Images
are converted to the model's channel count and resized to its input size; the OOD score and threshold
come from the model's metadata (written by `ccc-ray harden`), so the flag is the one the report measured.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ccc_ray.errors import CccError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def iter_inputs(paths: list[str], image_shape: tuple[int, int, int]) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, image C x H x W float32 in [0, 1]) for every input, in command-line order."""
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise CccError(f"input {raw!r} does not exist")
        if path.is_dir() and not any(path.glob("*.parquet")):
            files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise CccError(f"folder {raw!r} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}) "
                               "and no Parquet store")
            for file in files:
                yield str(file), load_image(file, image_shape)
        elif path.is_dir() or path.suffix == ".parquet":
            yield from _store_rows(path, image_shape)
        else:
            yield str(path), load_image(path, image_shape)


def load_image(path: Path, image_shape: tuple[int, int, int]) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError

    channels, height, width = image_shape
    try:
        with Image.open(path) as image:
            image = image.convert("L" if channels == 1 else "RGB")
            if image.size != (width, height):
                image = image.resize((width, height), Image.Resampling.BILINEAR)
            array = np.asarray(image, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError) as error:
        raise CccError(f"image {str(path)!r} cannot be read ({str(error).splitlines()[0]})") from None
    return torch.from_numpy(array.reshape(height, width, channels)).permute(2, 0, 1).contiguous()


def _store_rows(path: Path, image_shape: tuple[int, int, int]) -> Iterator[tuple[str, torch.Tensor]]:
    from ccc_ray.store.reader import read_store, table_images

    table = read_store(path, image_shape)
    images = table_images(table)
    for row_id, image in zip(table["id"].to_pylist(), images):
        yield f"{path}#{row_id}", image


def predict_main(args: argparse.Namespace, out=None) -> int:
    from ccc_ray.export.onnx_runtime import OnnxClassifier
    from ccc_ray.ood.scores import ood_score

    out = out or sys.stdout
    if args.batch_size < 1:
        raise CccError(f"--batch-size: must be at least 1, got {args.batch_size}")
    model = OnnxClassifier(args.model)
    meta = model.metadata
    class_names = list(meta.get("class_names") or [str(i) for i in range(model.num_classes)])
    reject = bool(meta.get("reject_class", False))
    score_name = meta.get("ood_score", "max_softmax")
    threshold = meta.get("threshold")
    print("input\tclass\tconfidence\t" + f"{score_name}\tood", file=out)
    batch_names: list[str] = []
    batch_images: list[torch.Tensor] = []
    seen = 0

    def flush() -> None:
        logits = model(torch.stack(batch_images))
        probabilities = logits.softmax(dim=1)
        confidence, predicted = probabilities.max(dim=1)
        scores = ood_score(score_name, logits, reject)
        for name, cls, conf, score in zip(batch_names, predicted.tolist(), confidence.tolist(), scores.tolist()):
            label = "reject" if cls >= len(class_names) else class_names[cls]
            flagged = "-" if threshold is None else ("yes" if score < threshold else "no")
            print(f"{name}\t{label}\t{conf:.6f}\t{score:.6f}\t{flagged}", file=out)
        batch_names.clear()
        batch_images.clear()

    for name, image in iter_inputs(args.images, model.image_shape):
        batch_names.append(name)
        batch_images.append(image)
        seen += 1
        if len(batch_images) == args.batch_size:
            flush()
        if args.limit is not None and seen >= args.limit:
            break
    if batch_images:
        flush()
    return 0
