"""ccc_ray/store/: the Parquet counterfeit store is atomic, readable by common tools, and validated on read."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from ccc_ray.errors import CccError
from ccc_ray.store import (COUNTERFEIT_SCHEMA, CounterfeitWriter, counterfeit_batch, read_store, store_class_names,
                           store_file, table_images)
from ccc_ray.store.reader import first_rows_per_class
from ccc_ray.store.schema import RUN_METADATA_KEY

NAMES = ["zero", "one", "two"]
SHA = "c0ffee" * 10 + "beef"


def make_images(n, height=4, width=5, channels=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, height, width, channels), dtype=np.uint8)


def make_batch(images, run_id="run-1", method="inversion", seed=7, start=0):
    index = np.arange(start, start + len(images))
    targets = index % 3
    return counterfeit_batch(images, targets, (targets + 1) % 3, 0.5 + 0.05 * index, np.full(len(index), 2.5),
                             index, run_id=run_id, method=method, classifier_sha256=SHA, seed=seed)


def write_run(store, images, run_id="run-1", method="inversion", chunks=1):
    with CounterfeitWriter(store, method, run_id, {"threshold": 0.9}, NAMES) as writer:
        start = 0
        for part in np.array_split(images, chunks):
            writer.write(make_batch(part, run_id, method, start=start))
            start += len(part)
    return writer.path


def test_written_file_has_the_schema_and_lineage(tmp_path):
    images = make_images(6)
    path = write_run(tmp_path, images, chunks=2)
    assert path == store_file(tmp_path, "inversion", "run-1") == tmp_path / "inversion-run-1.parquet"
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary or check files left

    schema = pq.read_schema(path)
    assert schema.remove_metadata().equals(COUNTERFEIT_SCHEMA)
    assert [field.name for field in schema if field.nullable] == ["source_id", "mask"]  # optional lineage
    assert json.loads(schema.metadata[RUN_METADATA_KEY]) == {"threshold": 0.9}
    assert store_class_names(tmp_path) == NAMES

    table = pq.read_table(path)
    assert table.num_rows == 6
    assert set(table["method"].to_pylist()) == {"inversion"}
    assert set(table["run_id"].to_pylist()) == {"run-1"}
    assert set(table["classifier_sha256"].to_pylist()) == {SHA}
    assert set(table["seed"].to_pylist()) == {7}
    assert table["target"].to_pylist() == [0, 1, 2, 0, 1, 2]
    assert table["predicted"].to_pylist() == [1, 2, 0, 1, 2, 0]
    assert np.allclose(table["confidence"].to_numpy(), 0.5 + 0.05 * np.arange(6))
    assert table["sample_index"].to_pylist() == list(range(6))
    assert len(set(table["id"].to_pylist())) == 6
    # Images come back exactly, both row by row and as the whole tensor.
    first = np.frombuffer(table["image"][0].as_py(), np.uint8).reshape(4, 5, 3)
    assert np.array_equal(first, images[0])
    assert torch.equal(table_images(table), torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255))


def test_table_images_of_a_sliced_table(tmp_path):
    images = make_images(5)
    table = read_store(write_run(tmp_path, images))
    sliced = table.slice(2, 2)
    assert torch.equal(table_images(sliced), torch.from_numpy(images[2:4]).permute(0, 3, 1, 2).float().div(255))


def test_first_rows_per_class_are_those_of_the_whole_store_read_part_by_part(tmp_path):
    write_run(tmp_path, make_images(10, seed=1), run_id="run-1", chunks=3)
    write_run(tmp_path, make_images(10, seed=2), run_id="run-2", chunks=2)
    table = read_store(tmp_path)
    images, targets = table_images(table), torch.tensor(table["target"].to_pylist())
    for per_class in (1, 5):  # 5: class 0 has 4 rows in the first file, so its fifth is in the second
        first = torch.cat([torch.nonzero(targets == c).flatten()[:per_class] for c in range(3)]).sort().values
        sample, sample_targets = first_rows_per_class(tmp_path, (3, 4, 5), 3, per_class)
        assert torch.equal(sample, images[first]) and torch.equal(sample_targets, targets[first])


def test_pandas_reads_the_store(tmp_path):
    import pandas as pd

    images = make_images(4, channels=1)
    frame = pd.read_parquet(write_run(tmp_path, images))
    assert list(frame.columns) == COUNTERFEIT_SCHEMA.names
    assert len(frame) == 4
    assert frame["target"].tolist() == [0, 1, 2, 0]
    assert frame["method"].unique().tolist() == ["inversion"]
    assert np.array_equal(np.frombuffer(frame["image"][3], np.uint8).reshape(4, 5, 1), images[3])
    assert str(frame["created_at"].dt.tz) == "UTC"


def test_ray_data_reads_the_store(ray_cluster, tmp_path):
    import ray

    path = write_run(tmp_path, make_images(7))
    dataset = ray.data.read_parquet(str(path))
    assert dataset.count() == 7
    assert dataset.schema().names == COUNTERFEIT_SCHEMA.names


def test_abort_leaves_no_file(tmp_path):
    writer = CounterfeitWriter(tmp_path, "inversion", "run-1", {}, NAMES)
    writer.write(make_batch(make_images(3)))
    assert any(p.name.endswith(".tmp") for p in tmp_path.iterdir())  # streaming into a hidden temporary
    writer.abort()
    assert list(tmp_path.iterdir()) == []


def test_failure_inside_the_block_leaves_no_file(tmp_path):
    with pytest.raises(RuntimeError, match="sampling failed"):
        with CounterfeitWriter(tmp_path, "inversion", "run-1", {}, NAMES) as writer:
            writer.write(make_batch(make_images(3)))
            raise RuntimeError("sampling failed")
    assert list(tmp_path.iterdir()) == []


def test_readers_do_not_see_a_run_in_progress(tmp_path):
    write_run(tmp_path, make_images(2), run_id="done")
    writer = CounterfeitWriter(tmp_path, "inversion", "running", {}, NAMES)
    try:
        writer.write(make_batch(make_images(5), run_id="running"))
        assert read_store(tmp_path).num_rows == 2
        (tmp_path / ".partial.parquet").write_bytes(b"half a file")  # hidden files are never read
        assert read_store(tmp_path).num_rows == 2
    finally:
        writer.abort()


def test_rewriting_a_run_id_replaces_its_rows(tmp_path):
    write_run(tmp_path, make_images(4, seed=1))
    first_ids = read_store(tmp_path)["id"].to_pylist()
    images = make_images(3, seed=2)
    write_run(tmp_path, images)
    table = read_store(tmp_path)
    assert table.num_rows == 3
    assert table["id"].to_pylist() == first_ids[:3]  # same run, seed and index: same ids
    assert torch.equal(table_images(table), torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255))
    write_run(tmp_path, make_images(2), run_id="run-2")
    assert read_store(tmp_path).num_rows == 5
    assert len(list(tmp_path.glob("*.parquet"))) == 2


def test_unsafe_run_ids_are_refused(tmp_path):
    with pytest.raises(CccError, match="run_id: '../x' must be"):
        CounterfeitWriter(tmp_path, "inversion", "../x", {}, NAMES)
    assert list(tmp_path.iterdir()) == []


def test_wrong_schema_is_refused(tmp_path):
    pq.write_table(pa.table({"x": [1, 2]}), tmp_path / "other.parquet")
    with pytest.raises(CccError, match="has no column 'id'; is it a ccc-ray store"):
        read_store(tmp_path)


def test_wrong_column_type_is_refused(tmp_path):
    table = pq.read_table(write_run(tmp_path / "good", make_images(3)))
    index = table.schema.get_field_index("target")
    retyped = table.set_column(index, pa.field("target", pa.int64(), nullable=False), table["target"].cast(pa.int64()))
    pq.write_table(retyped, tmp_path / "retyped.parquet")
    with pytest.raises(CccError, match="column 'target' is int64, expected int32"):
        read_store(tmp_path / "retyped.parquet")


def test_file_that_is_not_parquet_is_refused(tmp_path):
    (tmp_path / "broken.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(CccError, match="is not a Parquet file"):
        read_store(tmp_path)


def test_empty_and_missing_stores_are_refused(tmp_path):
    with pytest.raises(CccError, match="holds no .parquet files"):
        read_store(tmp_path)
    with pytest.raises(CccError, match="does not exist"):
        read_store(tmp_path / "missing")
    with CounterfeitWriter(tmp_path, "inversion", "nothing", {}, NAMES):
        pass
    with pytest.raises(CccError, match="is empty"):
        read_store(tmp_path)


def test_shape_and_class_mismatch_are_refused(tmp_path):
    path = write_run(tmp_path, make_images(3))  # 3 x 4 x 5 images, targets 0..2
    assert read_store(path, image_shape=(3, 4, 5), num_classes=3).num_rows == 3
    with pytest.raises(CccError, match="holds 3x4x5 images, expected 1x4x5"):
        read_store(path, image_shape=(1, 4, 5))
    with pytest.raises(CccError, match="has target class 2, but the classifier has 2 classes"):
        read_store(path, num_classes=2)


def test_mixed_image_shapes_are_refused(tmp_path):
    write_run(tmp_path, make_images(2, channels=3), run_id="rgb")
    write_run(tmp_path, make_images(2, channels=1), run_id="grey")
    with pytest.raises(CccError, match="mixes image shapes"):
        read_store(tmp_path)


def test_counterfeit_batch_wants_uint8_images():
    with pytest.raises(ValueError, match="uint8 N x H x W x C"):
        make_batch(make_images(2).astype(np.float32))
