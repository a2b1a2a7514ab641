"""The run's real images reach the Train workers as Ray Dataset shards (`ray.train.get_dataset_shard`).

The driver builds two Ray Datasets, `TRAIN` (split across the workers) and `TEST` (whole, read by rank 0
for its per-epoch accuracy), and a `TrainingDataInfo`: the little a worker needs besides rows (class
names, image shape, split sizes, the training split's class counts). Where the rows come from:
- a Parquet image source (`data.name parquet`): Ray Data tasks, one per store file, read the rows one
  row group at a time (`parquet_image_parts`); the driver reads only the `target` and shape columns, to
  split train from test by seed exactly as `load_dataset` does. Neither the driver nor a worker holds
  the whole set; the reads reserve no CPU, as the counterfeit pool's (`counterfeit_dataset`), so Train
  workers that hold every CPU cannot starve them;
- every other source is loaded whole by its own reader in the driver (digits and mnist_5k ship in the
  wheel and weigh a few MB; torchvision sets and image folders are read whole by their readers), and its
  arrays become the datasets' blocks in the object store. That is fine: the driver holds what it held
  before, and the workers no longer each load a copy (nor need the source's files on every node).

Rows arrive in plan order (`ingest_config`). A worker reads its share once and holds it (`worker_data`):
with one worker the share is the training split in `load_dataset`'s order, and the same seeded shuffle
as before runs over it, so training is exactly what it was when every worker loaded the whole set. With
N workers Ray's streaming split gives each an equal share (which rows go to which worker depends on
timing, where the DistributedSampler used before dealt a new random half every epoch); each worker pads
its share to ceil(rows / N) by repeating its first rows, as DistributedSampler pads, so every worker
takes the same number of steps (DDP needs that), and shuffles it each epoch with its own seed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import ray.data
import ray.train
import torch
from ray.data import ExecutionOptions
from ray.data.extensions import ArrowTensorArray

from ccc_ray.config import validate_config
from ccc_ray.data.dataset import ImageDataset, split_indices
from ccc_ray.data.parquet_images import PART_ROWS, parquet_image_parts, parquet_index
from ccc_ray.data.sources import DataConfig, conform, conformed_shape, load_dataset
from ccc_ray.errors import CccError
from ccc_ray.orchestration.ray_runtime import ensure_ray

TRAIN, TEST = "train", "test"  # the datasets' names, as the workers ask for their shards
READ_TASKS = 2  # store files read at once


@dataclass(frozen=True)
class TrainingDataInfo:
    """What a Train worker needs of the data besides its rows: small, whatever the data set's size."""

    name: str
    image_shape: tuple[int, int, int]
    class_names: tuple[str, ...]
    train_class_counts: tuple[int, ...]  # the whole training split's images per class
    test_rows: int

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def train_rows(self) -> int:
        return sum(self.train_class_counts)


def info_of(dataset: ImageDataset) -> TrainingDataInfo:
    counts = torch.bincount(dataset.train_labels, minlength=dataset.num_classes)
    return TrainingDataInfo(dataset.name, dataset.image_shape, tuple(dataset.class_names),
                            tuple(int(count) for count in counts), len(dataset.test_labels))


def _blocks(images: torch.Tensor, labels: torch.Tensor) -> list:
    """Arrow tables of at most PART_ROWS rows: `image` (a tensor column) and `label`."""
    import pyarrow as pa

    return [pa.table({"image": ArrowTensorArray.from_numpy(images[start:start + PART_ROWS].numpy()),
                      "label": pa.array(labels[start:start + PART_ROWS].numpy())})
            for start in range(0, len(labels), PART_ROWS)]


Datasets = Callable[[], dict[str, ray.data.Dataset]]  # builds the Ray Datasets by name (starts Ray)


def datasets_from_memory(dataset: ImageDataset) -> tuple[TrainingDataInfo, Datasets]:
    """A loaded data set's splits as Ray Datasets whose blocks are its arrays (in the object store)."""
    def build() -> dict[str, ray.data.Dataset]:
        ensure_ray()
        return {TRAIN: ray.data.from_arrow(_blocks(dataset.train_images, dataset.train_labels)),
                TEST: ray.data.from_arrow(_blocks(dataset.test_images, dataset.test_labels))}

    return info_of(dataset), build


def _read_rows(batch: dict[str, np.ndarray], keep: dict[str, np.ndarray], config: DataConfig,
               as_stored: bool) -> Iterator[dict[str, np.ndarray]]:
    """A Ray Data task: the kept rows of its store files, one row group at a time: the stored uint8 pixels
    (`as_stored`: a quarter of float32's bytes in the object store; the worker divides by 255), or
    float32 conformed as `load_dataset` conforms them (a source resized or recoloured)."""
    for file in batch["file"]:
        for pixels, labels in parquet_image_parts(str(file), keep[str(file)]):
            images = pixels if as_stored else conform(pixels.float().div_(255.0), config)
            yield {"image": images.numpy(), "label": labels.numpy()}


def datasets_from_parquet(config: DataConfig) -> tuple[TrainingDataInfo, Datasets]:
    """A Parquet image source as Ray Datasets read by tasks from its files; the driver holds 8 bytes a row."""
    index = parquet_index(config.root)
    train, test = split_indices(index.labels, config.test_fraction, config.split_seed)
    info = TrainingDataInfo("parquet", conformed_shape(index.image_shape, config), tuple(index.class_names),
                            tuple(int(n) for n in torch.bincount(index.labels[train], minlength=len(index.class_names))),
                            len(test))
    if not info.train_rows:
        raise CccError("data set 'parquet' has no training images")
    ends = np.cumsum([0, *index.rows_per_file])

    def split(rows: torch.Tensor) -> ray.data.Dataset:
        chosen = np.zeros(ends[-1], bool)
        chosen[rows.numpy()] = True
        keep = {file: chosen[ends[i]:ends[i + 1]] for i, file in enumerate(index.files)}
        files = ray.data.from_items([{"file": file} for file in index.files], override_num_blocks=len(index.files))
        return files.map_batches(_read_rows, batch_size=1, num_cpus=0, compute=ray.data.TaskPoolStrategy(size=READ_TASKS),
                                 fn_kwargs={"keep": keep, "config": config,
                                            "as_stored": info.image_shape == index.image_shape})

    def build() -> dict[str, ray.data.Dataset]:
        ensure_ray()
        return {TRAIN: split(train), TEST: split(test)}

    return info, build


def training_datasets(config: DataConfig) -> tuple[TrainingDataInfo, Datasets]:
    """What the workers need of the configured source besides rows, at once (bad data fails here, before
    Ray starts), and the builder of its train and test splits as Ray Datasets."""
    if config.name == "parquet":
        validate_config(config, "data.")
        return datasets_from_parquet(config)
    return datasets_from_memory(load_dataset(config))


def ingest_config(*split: str) -> ray.train.DataConfig:
    """Train's data config: `TRAIN` and the named datasets split across the workers, `TEST` whole; plan
    order kept, so one worker receives the rows in the order `load_dataset` gives them."""
    return ray.train.DataConfig(datasets_to_split=[TRAIN, *split],
                                execution_options=ExecutionOptions(preserve_order=True))


def as_float(images: np.ndarray) -> np.ndarray:
    """Rows as float32 in [0, 1]: stored uint8 pixels divided by 255 exactly as `table_images` divides them."""
    if images.dtype == np.uint8:
        return torch.from_numpy(images.copy()).float().div_(255.0).numpy()
    return images


def _read_whole(name: str, rows: int, image_shape: tuple[int, int, int],
                pad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """This worker's shard of dataset `name`, read once into float32 rows x C x H x W and int64 labels;
    with `pad`, a shard shorter than `rows` is padded with its first rows (else it is an error)."""
    images = np.empty((rows, *image_shape), np.float32)
    labels = np.empty(rows, np.int64)
    filled = 0
    for batch in ray.train.get_dataset_shard(name).iter_batches(batch_size=PART_ROWS, batch_format="numpy"):
        count = len(batch["label"])
        if filled + count > rows:
            raise CccError(f"{name} split: this worker received more than the {rows} rows it expected")
        images[filled:filled + count] = as_float(batch["image"])
        labels[filled:filled + count] = batch["label"]
        filled += count
    if rows and (filled == 0 or (filled < rows and not pad)):
        raise CccError(f"{name} split: {filled} of its {rows} rows reached this worker")
    for start in range(filled, rows, filled):  # pad by repeating the first rows
        count = min(filled, rows - start)
        images[start:start + count], labels[start:start + count] = images[:count], labels[:count]
    return torch.from_numpy(images), torch.from_numpy(labels)


def worker_data(info: TrainingDataInfo, rank: int, world: int) -> ImageDataset:
    """This worker's data: its share of the training split (ceil(rows / world) rows) and, on rank 0 only,
    the test split (the other ranks get an empty one: only rank 0's metrics are reported)."""
    train_images, train_labels = _read_whole(TRAIN, -(-info.train_rows // world), info.image_shape, pad=True)
    if rank == 0:
        test_images, test_labels = _read_whole(TEST, info.test_rows, info.image_shape, pad=False)
    else:
        test_images, test_labels = torch.empty(0, *info.image_shape), torch.empty(0, dtype=torch.int64)
    return ImageDataset(info.name, train_images, train_labels, test_images, test_labels, list(info.class_names))
