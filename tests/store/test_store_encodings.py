"""ccc_ray/store/writer.py: the store's own Parquet encodings give every value back exactly.

The writer encodes sample indices as deltas and ids, images and masks as delta-length byte arrays (cheaper
to write than Parquet's PLAIN, docs/BENCHMARKS.md); the store's reader, plain pyarrow and pandas must read
the same values as were written, across pages, row groups and null masks.
"""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ccc_ray.store import CounterfeitWriter, counterfeit_batch, read_store

SHA = "ab" * 32


def batch(images, index, masks=None, sources=None):
    n = len(images)
    return counterfeit_batch(images, index % 10, index % 10, np.linspace(0.99, 1.0, n), np.linspace(0.5, 9.0, n),
                             index, run_id="enc", method="inversion", classifier_sha256=SHA, seed=-5,
                             source_id=sources, mask=masks)


def test_every_value_reads_back_exactly(tmp_path):
    rng = np.random.default_rng(3)
    # Out of order, repeated, and deltas beyond int64 (0 next to 2**63-1): what delta encoding must survive.
    odd_index = np.array([2**63 - 1, 0, 5, 4, 2**62, 1, 2**63 - 1, 7], np.int64)
    first = batch(rng.integers(0, 256, (8, 6, 7, 3), np.uint8), odd_index,
                  masks=rng.integers(0, 256, (8, 6, 7), np.uint8), sources=[f"src-{i}" for i in range(7)] + [None])
    second = batch(rng.integers(0, 256, (3, 6, 7, 3), np.uint8), np.array([9, 8, 10]))  # null masks and sources
    # ~7 MB of images and 2,500 ids: several data pages per column chunk
    third = batch(rng.integers(0, 256, (2500, 32, 32, 3), np.uint8), np.arange(100, 2600),
                  masks=rng.integers(0, 256, (2500, 32, 32), np.uint8))
    with CounterfeitWriter(tmp_path, "inversion", "enc", {}, [str(k) for k in range(10)]) as writer:
        for part in (first, second):
            writer.write(part)
    expected = pa.Table.from_batches([first, second])
    assert pq.read_table(writer.path).equals(expected)
    assert read_store(writer.path, num_classes=10).equals(expected)
    assert pq.read_table(writer.path).to_pandas()["sample_index"].tolist() == odd_index.tolist() + [9, 8, 10]

    with CounterfeitWriter(tmp_path, "inversion", "big", {}, [str(k) for k in range(10)]) as writer:
        writer.write(third)
    assert pq.ParquetFile(writer.path).metadata.row_group(0).column(6).num_values == 2500
    assert pq.read_table(writer.path).equals(pa.Table.from_batches([third]))


def codecs(path):
    group = pq.ParquetFile(path).metadata.row_group(0)
    return {group.column(i).path_in_schema: group.column(i).compression for i in range(group.num_columns)}


def test_pixels_that_do_not_compress_are_stored_as_they_are(tmp_path):
    rng = np.random.default_rng(4)
    noise = rng.integers(0, 256, (1000, 16, 16, 1), np.uint8)  # 256 kB: zstd gains nothing on it
    smooth = (np.arange(256).reshape(1, 16, 16, 1) // 16 + rng.integers(0, 3, (1000, 16, 16, 1))).astype(np.uint8)
    paths = {}
    for name, images in (("noise", noise), ("smooth", smooth)):
        with CounterfeitWriter(tmp_path, "inversion", name, {}, [str(k) for k in range(10)]) as writer:
            writer.write(batch(images, np.arange(1000), masks=images[..., 0]))
            writer.write(batch(smooth[:10], np.arange(1000, 1010)))  # later rows do not change the file's choice
        paths[name] = writer.path
        assert pq.read_table(writer.path)["image"].to_pylist()[:1000] == [row.tobytes() for row in images]
    assert codecs(paths["noise"])["image"] == codecs(paths["noise"])["mask"] == "UNCOMPRESSED"
    assert codecs(paths["smooth"])["image"] == codecs(paths["smooth"])["mask"] == "ZSTD"
    assert codecs(paths["noise"])["id"] == codecs(paths["smooth"])["id"] == "ZSTD"
    assert paths["smooth"].stat().st_size < 0.75 * paths["noise"].stat().st_size
