"""ccc_ray/store/: the optional lineage columns `source_id` and `mask` (issue 11, item 7).

They are written when a method gives them and null otherwise; stores written before they existed still
read, with all-null columns, so every table `read_store` returns has one schema.
"""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from ccc_ray.errors import CccError
from ccc_ray.store import (COUNTERFEIT_SCHEMA, CounterfeitWriter, counterfeit_batch, read_store, row_mask,
                           table_images, table_masks)

NAMES = ["zero", "one", "two"]
SHA = "c0ffee" * 10 + "beef"
# The store's columns before the lineage columns were added, as files written then have them.
OLD_COLUMNS = ["id", "run_id", "method", "target", "predicted", "confidence", "image", "height", "width",
               "channels", "nearest_train_l2", "classifier_sha256", "seed", "sample_index", "created_at"]


def make_images(n, height=4, width=5, channels=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, height, width, channels), dtype=np.uint8)


def make_masks(n, height=4, width=5, seed=1):
    return np.random.default_rng(seed).integers(0, 256, size=(n, height, width), dtype=np.uint8)


def make_batch(images, run_id="run-1", start=0, **lineage):
    index = np.arange(start, start + len(images))
    return counterfeit_batch(images, index % 3, index % 3, np.full(len(index), 0.995), np.full(len(index), 2.5),
                             index, run_id=run_id, method="inversion", classifier_sha256=SHA, seed=7, **lineage)


def write(store, *batches, run_id="run-1"):
    with CounterfeitWriter(store, "inversion", run_id, {}, NAMES) as writer:
        for batch in batches:
            writer.write(batch)
    return writer.path


def test_lineage_columns_round_trip(tmp_path):
    images, masks = make_images(4), make_masks(4)
    sources = ["digits-train-17", None, "digits-train-3", "substrate-0"]
    table = read_store(write(tmp_path, make_batch(images, source_id=sources, mask=masks)))
    assert table.schema.remove_metadata().equals(COUNTERFEIT_SCHEMA)
    assert table["source_id"].to_pylist() == sources
    for i in range(4):
        assert np.array_equal(row_mask(table, i), masks[i])
    decoded, present = table_masks(table)
    assert present.tolist() == [True] * 4
    assert torch.equal(decoded, torch.from_numpy(masks).unsqueeze(1).float().div(255))
    assert decoded.shape == (4, 1, 4, 5) and decoded.dtype == torch.float32


def test_without_lineage_the_columns_are_null(tmp_path):
    path = write(tmp_path, make_batch(make_images(3)))
    raw = pq.read_table(path)  # as any Parquet reader sees the file
    assert raw["source_id"].null_count == 3 and raw["mask"].null_count == 3
    table = read_store(path)
    assert row_mask(table, 0) is None
    decoded, present = table_masks(table)
    assert present.tolist() == [False] * 3 and not decoded.any()


def test_batches_with_and_without_masks_mix_in_one_file(tmp_path):
    images, masks = make_images(5), make_masks(2)
    path = write(tmp_path, make_batch(images[:3]), make_batch(images[3:], start=3, mask=masks))
    table = read_store(path)
    decoded, present = table_masks(table)
    assert present.tolist() == [False, False, False, True, True]
    assert torch.equal(decoded[3:], torch.from_numpy(masks).unsqueeze(1).float().div(255))
    assert not decoded[:3].any()
    assert torch.equal(table_masks(table.slice(3, 2))[0], decoded[3:])  # a sliced table decodes too


def write_old_store(path, images):
    """A store file with exactly the columns and schema of the store before the lineage columns."""
    table = pa.Table.from_batches([make_batch(images, run_id="old")]).select(OLD_COLUMNS)
    old_schema = pa.schema([COUNTERFEIT_SCHEMA.field(name) for name in OLD_COLUMNS])
    pq.write_table(table.cast(old_schema), path, compression="zstd")
    assert pq.read_schema(path).names == OLD_COLUMNS


def test_old_stores_without_the_columns_still_read(tmp_path):
    old_images, new_images = make_images(3, seed=5), make_images(2, seed=6)
    write_old_store(tmp_path / "inversion-old.parquet", old_images)
    table = read_store(tmp_path / "inversion-old.parquet", image_shape=(3, 4, 5), num_classes=3)
    assert table.schema.remove_metadata().equals(COUNTERFEIT_SCHEMA)
    assert table["source_id"].null_count == 3 and table["mask"].null_count == 3
    assert torch.equal(table_images(table), torch.from_numpy(old_images).permute(0, 3, 1, 2).float().div(255))

    # An old file and a new one in one store folder read together.
    write(tmp_path, make_batch(new_images, run_id="new", source_id=["a", "b"], mask=make_masks(2)), run_id="new")
    pooled = read_store(tmp_path)
    assert pooled.num_rows == 5
    assert pooled["source_id"].to_pylist() == ["a", "b", None, None, None]  # files in name order: new, old
    assert table_masks(pooled)[1].sum().item() == 2


def test_wrong_lineage_inputs_are_refused():
    images = make_images(3)
    with pytest.raises(CccError, match="mask must be uint8 N x H x W = 3 x 4 x 5 like the images, got float32"):
        make_batch(images, mask=make_masks(3).astype(np.float32))
    with pytest.raises(CccError, match=r"mask must be uint8 .* got uint8 with shape \(3, 5, 4\)"):
        make_batch(images, mask=make_masks(3, height=5, width=4))
    with pytest.raises(CccError, match="source_id has 2 entries for 3 images"):
        make_batch(images, source_id=["a", "b"])
    with pytest.raises(CccError, match="source_id must be strings"):
        make_batch(images, source_id=[1, 2, 3])


def test_stores_with_bad_lineage_columns_are_refused(tmp_path):
    table = pa.Table.from_batches([make_batch(make_images(3), mask=make_masks(3))])
    short_masks = pa.array([b"\x00" * 20, None, b"\x00" * 19], pa.binary())  # the third is one byte short
    pq.write_table(table.set_column(table.schema.get_field_index("mask"), COUNTERFEIT_SCHEMA.field("mask"),
                                    short_masks), tmp_path / "short.parquet")
    with pytest.raises(CccError, match="short.parquet': 1 masks are not height x width bytes long"):
        read_store(tmp_path / "short.parquet")

    retyped = table.set_column(table.schema.get_field_index("source_id"), pa.field("source_id", pa.int64()),
                               pa.nulls(3, pa.int64()))
    pq.write_table(retyped, tmp_path / "retyped.parquet")
    with pytest.raises(CccError, match="column 'source_id' is int64, expected string"):
        read_store(tmp_path / "retyped.parquet")


def test_an_empty_batch_is_a_valid_batch(tmp_path):
    """Searches that keep nothing in a round hand the store empty arrays; they write no rows, and no error."""
    empty = make_batch(make_images(0), mask=make_masks(0), source_id=[])
    assert empty.num_rows == 0 and empty.schema.equals(COUNTERFEIT_SCHEMA)
    path = write(tmp_path, empty, make_batch(make_images(2)), make_batch(make_images(0), start=2))
    assert read_store(path).num_rows == 2
