"""`generate` on Ray Data: an actor pool writes the same rows as the in-process loop."""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from ccc_ray.counterfeits.generate import KeptChunk
from ccc_ray.job import load_job
from ccc_ray.orchestration.generation import chunk_columns, chunks_from_batches, generate_from_file


def test_chunks_survive_the_column_format_with_lineage_and_empty_chunks():
    rng = np.random.default_rng(0)
    full = KeptChunk(0, 5, rng.integers(0, 255, (2, 4, 4, 1), dtype=np.uint8), np.array([1, 3]), np.array([1, 3]),
                     np.array([0.99, 0.995], np.float32), np.array([1.5, 2.0], np.float32), np.array([0, 4]),
                     ["test:7", "test:9"], rng.integers(0, 255, (2, 4, 4), dtype=np.uint8))
    empty = KeptChunk(1, 5, np.zeros((0, 4, 4, 1), np.uint8), np.zeros(0, np.int64), np.zeros(0, np.int64),
                      np.zeros(0, np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))
    plain = KeptChunk(2, 3, full.images_hwc[:1], np.array([2]), np.array([2]), np.array([0.999], np.float32),
                      np.array([1.0], np.float32), np.array([11]))
    back = list(chunks_from_batches([chunk_columns([full, empty]), chunk_columns([plain])]))
    assert [(c.chunk, c.sampled, len(c.targets)) for c in back] == [(0, 5, 2), (1, 5, 0), (2, 3, 1)]
    assert (back[0].images_hwc == full.images_hwc).all() and (back[0].mask == full.mask).all()
    assert back[0].source_id == ["test:7", "test:9"] and back[2].source_id is None and back[2].mask is None
    assert (back[0].sample_index == [0, 4]).all() and back[0].confidence.dtype == np.float32


@pytest.mark.slow
def test_two_ray_data_actors_write_the_rows_the_in_process_loop_writes(ray_cluster, tmp_path,
                                                                        digits_classifier_file, digits_generator_file):
    tables = {}
    for actors in (0, 2):
        run = tmp_path / f"actors{actors}" / "default"
        run.mkdir(parents=True)
        shutil.copy(digits_generator_file, run / "generator-inversion.safetensors")
        job = load_job(None, {"run.output_dir": str(run.parent), "run.classifier_path": str(digits_classifier_file),
                              "generate.per_class": "20", "generate.batch_size": "64",
                              "generate.num_actors": str(actors), "generate.cpus_per_actor": "0.5",
                              "keep.confidence_bar": "0.3"})
        tables[actors] = pq.read_table(generate_from_file(job, progress=False).store_file)
    assert tables[0].num_rows > 0
    for column in ("id", "image", "target", "confidence", "sample_index"):
        assert tables[0].column(column).to_pylist() == tables[2].column(column).to_pylist(), column
