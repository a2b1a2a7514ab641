"""A Parquet image source read part by part (`parquet_index`, `parquet_image_parts`) gives what
`load_parquet_images` gives whole, and refuses what it refuses before any image is read."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from ccc_ray.data import parquet_images
from ccc_ray.data.parquet_images import load_parquet_images, parquet_image_parts, parquet_index
from ccc_ray.errors import CccError
from ccc_ray.store import CounterfeitWriter, counterfeit_batch


def image_store(folder, rows_per_file=(250, 130), side=5, channels=3) -> str:
    rng = np.random.default_rng(0)
    for part, rows in enumerate(rows_per_file):
        images = rng.integers(0, 256, size=(rows, side, side, channels), dtype=np.uint8)
        labels = rng.integers(0, 4, rows)
        with CounterfeitWriter(folder, "images", f"r{part}", {}, ["a", "b", "c", "d"]) as writer:
            for start in range(0, rows, 100):  # several row groups per file
                index = np.arange(start, min(start + 100, rows))
                writer.write(counterfeit_batch(images[index], labels[index], labels[index], np.full(len(index), 0.9),
                                               np.zeros(len(index)), index, run_id=f"r{part}", method="images",
                                               classifier_sha256="ab" * 32, seed=part))
    return str(folder)


def test_index_and_parts_give_the_rows_that_load_parquet_images_gives(tmp_path, monkeypatch):
    root = image_store(tmp_path / "store")
    images, labels, names = load_parquet_images(root)

    def refuse(*args, **kwargs):
        raise AssertionError("the index read images")

    monkeypatch.setattr(parquet_images, "scan_store", refuse)
    index = parquet_index(root)
    monkeypatch.undo()
    monkeypatch.setattr(parquet_images, "PART_ROWS", 100)
    assert torch.equal(index.labels, labels) and index.class_names == names == ["a", "b", "c", "d"]
    assert index.image_shape == (3, 5, 5) and index.rows_per_file == [250, 130]
    chosen = np.random.default_rng(1).random(len(labels)) < 0.3
    got_images, got_labels = [], []
    for file, first, last in zip(index.files, (0, 250), (250, 380)):
        for part_images, part_labels in parquet_image_parts(file, chosen[first:last]):
            got_images.append(part_images)
            got_labels.append(part_labels)
    assert len(got_images) >= 4  # read part by part (row groups of 100)
    assert torch.equal(torch.cat(got_images).float().div_(255.0), images[torch.from_numpy(chosen)])
    assert torch.equal(torch.cat(got_labels), labels[torch.from_numpy(chosen)])


def test_the_index_refuses_a_wrong_schema_and_mixed_shapes(tmp_path):
    bad = tmp_path / "bad.parquet"
    table = pq.read_table(image_store(tmp_path / "one", (10,)) + "/" + "images-r0.parquet")
    target = table.schema.get_field_index("target")
    pq.write_table(table.set_column(target, "target", pa.array(table["target"].to_numpy().astype(np.int64))), bad)
    with pytest.raises(CccError, match="column 'target' is int64, expected int32"):
        parquet_index(str(bad))
    image_store(tmp_path / "mixed", (10,), side=5)
    image_store(tmp_path / "mixed2", (10,), side=6)
    (tmp_path / "mixed2" / "images-r0.parquet").rename(tmp_path / "mixed" / "other.parquet")
    with pytest.raises(CccError, match="mixes image shapes"):
        parquet_index(str(tmp_path / "mixed"))
