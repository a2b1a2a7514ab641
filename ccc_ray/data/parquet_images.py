"""The project's own Parquet stores as a data set: images with `label` (or `target`) as the class."""

from __future__ import annotations

import torch

from ccc_ray.store.reader import read_store, store_class_names, table_images


def load_parquet_images(root: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    table = read_store(root)
    images = table_images(table)
    labels = torch.tensor(table["target"].to_pylist(), dtype=torch.int64)
    names = store_class_names(root) or [str(i) for i in range(int(labels.max()) + 1)]
    return images, labels, names
