"""Storage URIs: the counterfeit store and `ccc-ray generate` write and read through an S3 API on loopback.

The S3 server is moto's (tests/platform/conftest.py); pyarrow.fs talks to it exactly as it would to S3,
found through AWS_ENDPOINT_URL. Local-path behaviour is covered in tests/core/test_core_store.py.
"""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from ccc_ray.cli import main
from ccc_ray.errors import CccError
from ccc_ray.store.files import ensure_writable_dir, filesystem_for, join_location
from ccc_ray.store import (
    CounterfeitWriter,
    counterfeit_batch,
    read_store,
    store_class_names,
    store_file,
    table_images,
)

BUCKET = "ccc-platform"
NAMES = ["zero", "one", "two"]


def batch(images, run_id="run-1", start=0):
    index = np.arange(start, start + len(images))
    return counterfeit_batch(images, index % 3, index % 3, np.full(len(index), 0.995), np.full(len(index), 2.0),
                             index, run_id=run_id, method="inversion", classifier_sha256="ab" * 32, seed=3)


def images(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, 8, 8, 1), dtype=np.uint8)


def test_store_round_trip_through_s3(s3_server, s3_keys):
    store = f"s3://{BUCKET}/round-trip"
    pixels = images(7)
    with CounterfeitWriter(store, "inversion", "run-1", {"threshold": 0.99}, NAMES) as writer:
        writer.write(batch(pixels[:4]))
        writer.write(batch(pixels[4:], start=4))
        # While the run streams, the only object is a hidden temporary: readers see no store file yet.
        in_progress = s3_keys("round-trip/")
        assert len(in_progress) <= 1 and all(key.rsplit("/", 1)[1].startswith(".") for key in in_progress)
        with pytest.raises(CccError, match="holds no .parquet files|does not exist"):
            read_store(store)
    assert writer.path == store_file(store, "inversion", "run-1") == f"{store}/inversion-run-1.parquet"
    assert s3_keys("round-trip/") == ["round-trip/inversion-run-1.parquet"]  # no temporary left behind

    table = read_store(store, image_shape=(1, 8, 8), num_classes=3)
    assert table.num_rows == 7 and table["sample_index"].to_pylist() == list(range(7))
    assert np.array_equal(table_images(table).mul(255).round().byte().permute(0, 2, 3, 1).numpy(), pixels)
    assert store_class_names(store) == NAMES
    assert read_store(writer.path).num_rows == 7  # the file's own URI reads too

    # Re-running the run id replaces the object: no duplicate rows.
    with CounterfeitWriter(store, "inversion", "run-1", {}, NAMES) as again:
        again.write(batch(images(3, seed=1)))
    assert read_store(store).num_rows == 3
    assert s3_keys("round-trip/") == ["round-trip/inversion-run-1.parquet"]


def test_failed_write_to_s3_leaves_no_object(s3_server, s3_keys):
    store = f"s3://{BUCKET}/failed"
    with pytest.raises(RuntimeError, match="sampling failed"):
        with CounterfeitWriter(store, "inversion", "run-1", {}, NAMES) as writer:
            writer.write(batch(images(5)))
            raise RuntimeError("sampling failed")
    assert s3_keys("failed/") == []


def test_uri_with_endpoint_in_the_query(s3_server, s3_keys, monkeypatch):
    """Without AWS_ENDPOINT_URL, pyarrow's `?endpoint_override=...&scheme=http` names the server in the URI."""
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    host = s3_server.removeprefix("http://")
    store = f"s3://{BUCKET}/query?endpoint_override={host}&scheme=http"
    with CounterfeitWriter(store, "inversion", "q", {}, NAMES) as writer:
        writer.write(batch(images(2), run_id="q"))
    assert writer.path == join_location(store, "inversion-q.parquet")
    assert writer.path.endswith("/inversion-q.parquet?endpoint_override=" + host + "&scheme=http")
    assert read_store(store).num_rows == 2
    assert s3_keys("query/") == ["query/inversion-q.parquet"]


def test_missing_bucket_is_one_clear_error(s3_server):
    with pytest.raises(CccError, match=r"run.counterfeit_store: cannot write to 's3://no-such-bucket-ccc/x'"):
        CounterfeitWriter("s3://no-such-bucket-ccc/x", "inversion", "run-1", {}, NAMES)
    with pytest.raises(CccError, match="does not exist"):
        read_store(f"s3://{BUCKET}/nothing-here")


def test_unknown_scheme_is_one_clear_error():
    with pytest.raises(CccError, match=r"run.counterfeit_store: cannot open 'nosuch://x/y'.*s3://, gs://"):
        ensure_writable_dir("nosuch://x/y", "run.counterfeit_store")


def test_generate_writes_its_store_to_s3(s3_server, s3_keys, tmp_path, capsys, digits_classifier_file,
                                         digits_generator_file):
    """The real `ccc-ray generate` with `--run.counterfeit_store s3://...`; the file opens with pyarrow and Ray Data."""
    store = f"s3://{BUCKET}/generate/counterfeits"
    code = main(["generate", "--run.output_dir", str(tmp_path), "--run.run_id", "s3run",
                 "--run.classifier_path", str(digits_classifier_file),
                 "--run.generator_path", str(digits_generator_file), "--run.counterfeit_store", store,
                 "--generate.per_class", "4", "--keep.confidence_bar", "0.05"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert f"store {store}/inversion-s3run.parquet" in captured.out
    assert s3_keys("generate/") == ["generate/counterfeits/inversion-s3run.parquet"]
    table = read_store(store, image_shape=(1, 8, 8), num_classes=10)
    assert table.num_rows > 0 and set(table["run_id"].to_pylist()) == {"s3run"}
    filesystem, path = filesystem_for(f"{store}/inversion-s3run.parquet", "test")
    assert pq.read_table(path, filesystem=filesystem).num_rows == table.num_rows
    assert (tmp_path / "s3run" / "generate-inversion.json").is_file()  # reports stay in the local run folder


def test_tune_trials_checkpoint_under_an_s3_storage_path(s3_server, s3_keys, tmp_path, digits_classifier_file):
    """`ccc-ray tune --run.storage_path s3://...`: the search and each trial's Train checkpoints are objects."""
    import ray

    ray.shutdown()  # the shared Ray's workers were started without moto's S3 settings in their environment
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        code = main(["tune", "--run.output_dir", str(tmp_path), "--run.classifier_path", str(digits_classifier_file),
                     "--run.storage_path", f"s3://{BUCKET}/tuned", "--inversion.steps", "20",
                     "--inversion.batch_size", "32", "--run.checkpoint_every", "10", "--tune.num_samples", "1",
                     "--tune.scheduler", "fifo", "--tune.score_per_class", "3", "--keep.confidence_bar", "0.3"])
    finally:
        ray.shutdown()
    assert code == 0
    keys = s3_keys("tuned/tune/")
    assert any(key.startswith("tuned/tune/default-tune-inversion/") for key in keys), keys
    assert any(key.startswith("tuned/tune/trials/") and key.endswith("/state.pt") for key in keys), keys
    assert not (tmp_path / "default" / "ray").exists()
    assert (tmp_path / "default" / "tune-best.yaml").is_file()  # tables and the best config stay local
