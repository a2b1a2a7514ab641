"""The project's own Parquet stores as a data set: images with `label` (or `target`) as the class.

Two ways to read one: `load_parquet_images` holds every image (what `load_dataset` returns), and, for a
source larger than one process should hold, `parquet_index` (the labels and image shape, from four small
columns, no image) plus `parquet_image_parts` (the chosen rows of one file, one row group at a time),
which Ray Data tasks run in `ccc_ray/orchestration/training_data.py`. Both give the same tensors.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from ccc_ray.errors import CccError
from ccc_ray.store.reader import (
    read_file_parts,
    read_store,
    scan_store,
    store_class_names,
    store_files,
    table_images,
    table_pixels,
)

PART_ROWS = 4096  # rows per part when a file is read part by part: bounds a reader's memory
INDEX_COLUMNS = ["target", "channels", "height", "width"]


def load_parquet_images(root: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    table = read_store(root)
    images = table_images(table)
    labels = torch.tensor(table["target"].to_pylist(), dtype=torch.int64)
    names = store_class_names(root) or [str(i) for i in range(int(labels.max()) + 1)]
    return images, labels, names


@dataclass
class ParquetIndex:
    """A Parquet image source without its images: enough to split it and to plan its reads."""

    files: list[str]  # in `load_parquet_images`' order
    rows_per_file: list[int]
    labels: torch.Tensor  # int64, every row's class, in file order
    image_shape: tuple[int, int, int]  # as stored (C, H, W)
    class_names: list[str]


def parquet_index(root: str) -> ParquetIndex:
    """Read the `target` and shape columns of every file of `root` (8 bytes a row held, no image).

    Checks up front what `load_dataset` would refuse before reading an image (each file's schema, an empty
    source, mixed image shapes, classes beyond the stored names); the checks of values run where the rows
    are read (`parquet_image_parts`).
    """
    files = [str(file) for file in store_files(root)]
    labels, shapes, rows = [], set(), []
    for file in files:
        (table,) = read_file_parts(file, None, columns=INDEX_COLUMNS)  # its schema checked, as read_store checks it
        for name in INDEX_COLUMNS:
            if table[name].null_count:
                raise CccError(f"counterfeit store {file!r}: column {name!r} has {table[name].null_count} empty values")
        rows.append(table.num_rows)
        labels.append(table["target"].to_numpy().astype(np.int64))
        shape = table.select(["channels", "height", "width"]).group_by(["channels", "height", "width"]).aggregate([])
        shapes |= set(zip(*(shape[name].to_pylist() for name in ("channels", "height", "width"))))
    if not sum(rows):
        raise CccError(f"counterfeit store {root!r} is empty")
    if len(shapes) != 1:
        raise CccError(f"counterfeit store {root!r} mixes image shapes {sorted(shapes)}")
    all_labels = torch.from_numpy(np.concatenate(labels))
    names = store_class_names(root) or [str(i) for i in range(int(all_labels.max()) + 1)]
    if all_labels.min() < 0 or all_labels.max() >= len(names):
        raise CccError(f"data set 'parquet': labels must lie in [0, {len(names)})")
    return ParquetIndex(files, rows, all_labels, next(iter(shapes)), names)


def parquet_image_parts(file: str, keep: np.ndarray) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The rows of `file` where `keep` (bool, one per row of the file) is set, in file order, one row group
    at a time: the stored pixels, uint8 N x C x H x W (`/ 255` as `table_images` gives exactly
    `load_parquet_images`' values), and int64 labels. Each part is checked as `read_store` checks a file."""
    offset = 0
    for _, table in scan_store(file, batch_rows=PART_ROWS):
        mask = keep[offset:offset + table.num_rows]
        offset += table.num_rows
        if mask.any():
            part = table.filter(pa.array(mask))
            yield table_pixels(part), torch.from_numpy(part["target"].to_numpy().astype(np.int64))
    if offset != len(keep):
        raise CccError(f"data.root: {file!r} changed while it was read ({offset} rows, {len(keep)} indexed)")
