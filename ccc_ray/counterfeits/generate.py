"""Sample counterfeits from a trained method, judge them by the keep rule (`keep.py`), write Parquet.

Confidence is measured on the uint8 image that is written, not the float output of the generator, so
every stored row is a counterfeit at the stated confidence when read back. Methods that start from a
real or substrate image, or make an edit mask, store its `source_id` and `mask` beside the image.
"""

from __future__ import annotations

import ctypes
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from tqdm import tqdm

from ccc_ray.data.dataset import ImageDataset
from ccc_ray.errors import CccError
from ccc_ray.counterfeits.far import FarFromData
from ccc_ray.counterfeits.keep import score_as_stored
from ccc_ray.counterfeits.quality import (
    dequantize,
    nearest_distances,
    per_class_diversity_ratio,
    quantize,
)
from ccc_ray.store.files import atomic_write_bytes
from ccc_ray.store.writer import CounterfeitWriter, counterfeit_batch

DIVERSITY_SAMPLE_PER_CLASS = 200
TRIM_EVERY_BYTES = 32 * 2**20  # of sampled float images: how often freed heap memory goes back to the OS


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
    near_dropped: int = 0  # confident samples not stored because the far rule called them near the data

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
                "distance_ratio": self.distance_ratio, "diversity_ratio_per_class": self.diversity_ratio_per_class,
                "near_dropped": self.near_dropped}


@dataclass
class KeptChunk:
    """The rows one chunk of sampling kept, as plain arrays: what an in-process loop or a Ray Data actor
    hands to the writer (the same arrays either way, so the store does not depend on who sampled)."""

    chunk: int
    sampled: int
    images_hwc: np.ndarray  # n x H x W x C uint8, as stored
    targets: np.ndarray  # n int64
    predicted: np.ndarray  # n int64
    confidence: np.ndarray  # n float32
    nearest_train_l2: np.ndarray  # n float32
    sample_index: np.ndarray  # n int64: position in the run's sample plan (the row id's input)
    source_id: list[str] | None = None
    mask: np.ndarray | None = None  # n x H x W uint8
    near_dropped: int = 0  # confident samples of the chunk the far rule dropped as near the data


def sample_plan(num_classes: int, per_class: int, batch_size: int) -> list[tuple[int, int, int]]:
    """(chunk, start, stop) per batch of the run's samples: targets are class-major, `per_class` each."""
    total = num_classes * per_class
    return [(chunk, start, min(start + batch_size, total))
            for chunk, start in enumerate(range(0, total, batch_size))]


def kept_and_far(scored, far: FarFromData | None) -> tuple[torch.Tensor, int]:
    """The keep rule's rows, less the confident ones near the data when a far rule is given, and how many
    confident rows were dropped as near."""
    if far is None:
        return scored.kept, 0
    too_near = scored.kept & ~far.is_far(scored.stored)
    return scored.kept & ~too_near, int(too_near.sum())


def sample_chunk(method, classifier, dataset: ImageDataset, per_class: int, chunk: int, start: int, stop: int, *,
                 confidence_bar: float, seed: int, device: torch.device | str = "cpu",
                 far: FarFromData | None = None) -> KeptChunk:
    """Sample one chunk of the plan with its own seed, judge it by the keep rule, keep the kept rows.

    With `far` (the fitted far rule), only kept samples that are also far from the data stay; the
    confident ones dropped as near are counted (`near_dropped`)."""
    targets = torch.arange(dataset.num_classes).repeat_interleave(per_class)[start:stop]
    sampled = method.sample_with_lineage(targets, seed * 100_003 + chunk, dataset)
    scored = score_as_stored(sampled.images, targets, classifier, confidence_bar, device)
    keep, near_dropped = kept_and_far(scored, far)
    lineage = lineage_columns(sampled, keep)
    return KeptChunk(
        chunk, len(targets), scored.stored[keep].permute(0, 2, 3, 1).contiguous().numpy(), targets[keep].numpy(),
        scored.predicted[keep].numpy(), scored.confidence[keep].numpy().astype(np.float32),
        nearest_distances(scored.images[keep], dataset.train_images).numpy().astype(np.float32),
        torch.arange(start, stop)[keep].numpy(), lineage.get("source_id"), lineage.get("mask"), near_dropped)


def generate_counterfeits(method, classifier, classifier_sha256: str, dataset: ImageDataset, *, store_dir: Path | str,
                          run_id: str, per_class: int, confidence_bar: float, seed: int, batch_size: int,
                          run_metadata: dict, device: torch.device | str = "cpu", progress: bool = True,
                          chunks: Iterable[KeptChunk] | None = None,
                          far: FarFromData | None = None) -> GenerateReport:
    """Sample `per_class` images per class, keep those the keep rule keeps, stream them into the store.

    `chunks` are the sampled chunks when another engine made them (Ray Data actors, in plan order);
    by default they are sampled here, one after another. With `far` (the fitted far rule) only kept
    samples far from the data are stored; the confident near ones are counted in the report (`near_dropped`). `store_dir` is a local folder or a storage URI
    (s3://, gs://, ...). Memory is one chunk, a fixed diversity sample per class and 4 bytes per row (the
    distance figure), whatever the number of rows.
    """
    k = dataset.num_classes
    total = k * per_class
    if chunks is None:
        chunks = (sample_chunk(method, classifier, dataset, per_class, chunk, start, stop,
                               confidence_bar=confidence_bar, seed=seed, device=device, far=far)
                  for chunk, start, stop in sample_plan(k, per_class, batch_size))
    kept_per_class = np.zeros(k, dtype=np.int64)
    kept_images, kept_targets, kept_distances = [], [], []
    since_trim = 0
    near_dropped = 0
    with CounterfeitWriter(store_dir, method.name, run_id, run_metadata, dataset.class_names) as writer, \
            tqdm(total=total, desc="generate", unit="img", disable=not progress) as bar:
        for kept in chunks:
            writer.write(counterfeit_batch(
                kept.images_hwc, kept.targets, kept.predicted, kept.confidence, kept.nearest_train_l2,
                kept.sample_index, run_id=run_id, method=method.name, classifier_sha256=classifier_sha256, seed=seed,
                source_id=kept.source_id, mask=kept.mask))
            # The diversity figure needs only a bounded sample per class, kept as the stored uint8 images:
            # memory stays flat at any row count (at most DIVERSITY_SAMPLE_PER_CLASS images per class).
            retain = kept_per_class[kept.targets] + rank_within_class(kept.targets) < DIVERSITY_SAMPLE_PER_CLASS
            np.add.at(kept_per_class, kept.targets, 1)
            kept_images.append(torch.from_numpy(kept.images_hwc[retain]).permute(0, 3, 1, 2))
            kept_targets.append(torch.from_numpy(kept.targets[retain]))
            kept_distances.append(torch.from_numpy(kept.nearest_train_l2))
            bar.update(kept.sampled)
            near_dropped += kept.near_dropped
            since_trim += kept.sampled * int(np.prod(dataset.image_shape)) * 4
            if since_trim >= TRIM_EVERY_BYTES:
                return_freed_memory()
                since_trim = 0
        if not kept_per_class.any():  # raising inside the writer's block aborts it: no empty store file
            raise CccError(f"generate: none of {total} samples reached confidence {confidence_bar}"
                           f"{f' far from the data ({near_dropped} confident ones were near)' if near_dropped else ''}; "
                           f"train the generator longer (--{method.name}.steps) or lower --keep.confidence_bar")
    kept_all = dequantize(torch.cat(kept_images))
    kept_t = torch.cat(kept_targets).long()
    distances = torch.cat(kept_distances)
    test_distance = float(nearest_distances(dataset.test_images, dataset.train_images).mean())
    return GenerateReport(
        store_file=str(writer.path), sampled=total, kept=int(kept_per_class.sum()),
        kept_share_per_class={c: float(kept_per_class[c] / per_class) for c in range(k)},
        mean_nearest_train_l2=float(distances.mean()) if len(distances) else float("nan"),
        test_mean_nearest_train_l2=test_distance,
        diversity_ratio_per_class=per_class_diversity_ratio(kept_all, kept_t, dataset.test_images,
                                                            dataset.test_labels, k),
        near_dropped=near_dropped)


def read_sources(dataset: ImageDataset, sources: list[str]) -> tuple[torch.Tensor, list[str], list[int | None]]:
    """`generate.sources` as images N x C x H x W float32 in [0, 1], their ids (the store's `source_id`) and
    classes (None for an image file): rows of the data (test:N, train:N) or image files of its exact shape.

    Nothing is resized: a counterfactual's mask is a saliency map of the image as given."""
    channels, height, width = dataset.image_shape
    images, ids, labels = [], [], []
    for source in sources:
        split, _, row = source.partition(":")
        if split in ("test", "train") and row.isdigit():
            split_images, split_labels = ((dataset.test_images, dataset.test_labels) if split == "test"
                                          else (dataset.train_images, dataset.train_labels))
            index = int(row)
            if index >= len(split_images):
                raise CccError(f"generate.sources: {source!r} is not a row of {dataset.name}: its {split} split has "
                               f"{len(split_images)} rows ({split}:0 to {split}:{len(split_images) - 1})")
            images.append(split_images[index])
            ids.append(f"{split}:{index}")
            labels.append(int(split_labels[index]))
            continue
        path = Path(source)
        if not path.is_file():
            raise CccError(f"generate.sources: {source!r} is neither a row of the data (test:N or train:N) nor an "
                           "image file")
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as image:
                if image.size != (width, height):
                    raise CccError(f"generate.sources: image {source!r} is {image.size[0]}x{image.size[1]} pixels; "
                                   f"the run's data ({dataset.name}) has {width}x{height} images, and sources are "
                                   "not resized")
                array = np.asarray(image.convert("L" if channels == 1 else "RGB"), dtype=np.float32) / 255.0
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError) as error:
            raise CccError(f"generate.sources: image {source!r} cannot be read "
                           f"({str(error).splitlines()[0]})") from None
        images.append(torch.from_numpy(array.reshape(height, width, channels)).permute(2, 0, 1).contiguous())
        ids.append(f"file:{path}")
        labels.append(None)
    return torch.stack(images), ids, labels


def translate_sources(method, classifier, classifier_sha256: str, dataset: ImageDataset, sources: torch.Tensor,
                      source_ids: list[str], targets: torch.Tensor, *, store_dir: Path | str, run_id: str,
                      confidence_bar: float, seed: int, run_metadata: dict, device: torch.device | str = "cpu",
                      far: FarFromData | None = None) -> GenerateReport:
    """`generate --generate.sources`: one counterfeit per given image toward its target, judged by the keep
    rule (and the far rule) like sampled ones, and written as one chunk; nothing is written if none is kept."""
    sampled = method.sample_from(sources.to(device), source_ids, targets.to(device), seed)
    scored = score_as_stored(sampled.images, targets, classifier, confidence_bar, device)
    keep, near_dropped = kept_and_far(scored, far)
    lineage = lineage_columns(sampled, keep)
    images_hwc = scored.stored[keep].permute(0, 2, 3, 1).contiguous().numpy()
    distances = nearest_distances(scored.images[keep], dataset.train_images)
    with CounterfeitWriter(store_dir, method.name, run_id, run_metadata, dataset.class_names) as writer:
        if not keep.any():  # raising inside the writer's block aborts it: no store file
            raise CccError(f"generate: none of the {len(targets)} translations reached confidence {confidence_bar}"
                           f"{f' far from the data ({near_dropped} confident ones were near)' if near_dropped else ''}; "
                           f"train the generator longer (--{method.name}.steps) or lower --keep.confidence_bar")
        writer.write(counterfeit_batch(
            images_hwc, targets[keep].numpy(), scored.predicted[keep].numpy(),
            scored.confidence[keep].numpy().astype(np.float32), distances.numpy().astype(np.float32),
            torch.arange(len(targets))[keep].numpy(), run_id=run_id, method=method.name,
            classifier_sha256=classifier_sha256, seed=seed, source_id=lineage.get("source_id"),
            mask=lineage.get("mask")))
    requested = torch.bincount(targets, minlength=dataset.num_classes)
    kept_per_class = torch.bincount(targets[keep], minlength=dataset.num_classes)
    return GenerateReport(
        store_file=str(writer.path), sampled=len(targets), kept=int(keep.sum()),
        kept_share_per_class={c: float(kept_per_class[c] / requested[c]) for c in range(dataset.num_classes)
                              if requested[c]},
        mean_nearest_train_l2=float(distances.mean()),
        test_mean_nearest_train_l2=float(nearest_distances(dataset.test_images, dataset.train_images).mean()),
        near_dropped=near_dropped)


def lineage_columns(sampled, keep: torch.Tensor) -> dict:
    """The store's optional lineage columns for the kept rows: source ids and masks, where the method has them."""
    columns = {}
    if sampled.source_ids is not None:
        columns["source_id"] = [sampled.source_ids[i] for i in torch.nonzero(keep).flatten().tolist()]
    if sampled.masks is not None:
        columns["mask"] = quantize(sampled.masks[keep.to(sampled.masks.device)].cpu()).numpy()
    return columns


def return_freed_memory() -> None:
    """Hand freed heap memory back to the OS (glibc only; elsewhere a no-op).

    After the first large tensor is freed, glibc raises its mmap threshold, so later per-batch tensors
    come from the heap, and the heap keeps what is freed: without this, peak RSS grew by 420 MB between
    10,000 and 100,000 generated 32x32 RGB rows although no rows are held (benchmarks/store_load.py).
    """
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL("libc.so.6")
        except OSError:
            _LIBC = False
    if _LIBC and hasattr(_LIBC, "malloc_trim"):
        _LIBC.malloc_trim(0)
    pa.default_memory_pool().release_unused()  # Arrow's own allocator (mimalloc or jemalloc) keeps pages too


_LIBC = None


def rank_within_class(targets: np.ndarray) -> np.ndarray:
    """For each row, how many earlier rows of the batch have the same target (0 for the first of a class)."""
    order = np.argsort(targets, kind="stable")
    sorted_targets = targets[order]
    starts = np.flatnonzero(np.r_[True, sorted_targets[1:] != sorted_targets[:-1]])
    ranks = np.empty(len(targets), dtype=np.int64)
    ranks[order] = np.arange(len(targets)) - np.repeat(starts, np.diff(np.r_[starts, len(targets)]))
    return ranks


def write_report(report: GenerateReport, path: Path) -> None:
    atomic_write_bytes(path, json.dumps(report.to_dict(), indent=2).encode())
