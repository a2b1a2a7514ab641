"""The counterfeit pool reaches the hardening workers as Ray Data shards (issue 16): the driver reads no
store whole, each worker gets its share of the training rows, and a pool larger than a worker's window
streams through it; with one worker and a pool that fits, training is what it was on the whole pool."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ccc_ray.classifiers.weights import load_classifier
from ccc_ray.hardening import counterfeits as counterfeits_module
from ccc_ray.counterfeits.far import FarRule, fit_far_rule
from ccc_ray.hardening.counterfeits import split_counterfeits
from ccc_ray.job import load_job
from ccc_ray.hardening.pool import scan_pool
from ccc_ray.orchestration import harden_classifier as harden_module
from ccc_ray.orchestration.harden_classifier import counterfeit_dataset, fine_tune_in_process, harden_classifier
from ccc_ray.store import CounterfeitWriter, counterfeit_batch
from ccc_ray.store import reader

pytestmark = pytest.mark.slow


def noise_store(folder: Path, run_id: str, n: int, seed: int) -> str:
    images = np.random.default_rng(seed).integers(0, 256, size=(n, 8, 8, 1), dtype=np.uint8)
    targets = np.arange(n) % 10
    with CounterfeitWriter(folder, "inversion", run_id, {}, [str(i) for i in range(10)]) as writer:
        for start in range(0, n, 100):
            part = slice(start, start + 100)
            writer.write(counterfeit_batch(images[part], targets[part], targets[part], np.full(n, 0.995)[part],
                                           np.full(n, 3.0)[part], np.arange(n)[part], run_id=run_id,
                                           method="inversion", classifier_sha256="ab" * 32, seed=seed))
    return str(writer.path)


def test_two_workers_stream_their_shares_and_the_driver_reads_no_store_whole(ray_cluster, tmp_path, monkeypatch,
                                                                             digits, digits_classifier_file):
    stores = [noise_store(tmp_path / "a", "r0", 600, 1), noise_store(tmp_path / "b", "r1", 600, 2)]
    train_rows = len(split_counterfeits(stores, (1, 8, 8), 10, 0.3, 0).train_ids)

    def refuse(*args, **kwargs):
        raise AssertionError("the driver read a whole store")

    # Whole-store reads fail in this (the driver's) process; Ray's workers are other processes. The pool is
    # small: without the line at 0 the driver would read it (below POOL_IN_MEMORY_BYTES) instead of tasks.
    monkeypatch.setattr(reader, "_read_file", refuse)
    monkeypatch.setattr(counterfeits_module, "read_store", refuse)
    monkeypatch.setattr(harden_module, "POOL_IN_MEMORY_BYTES", 0)
    monkeypatch.setattr(harden_module, "training_rows", refuse)
    job = load_job(None, {"run.output_dir": str(tmp_path), "run.run_id": "shards", "run.num_workers": 2,
                          "harden.mode": "oe", "harden.epochs": 2, "harden.pool_rows_per_worker": 100})
    info, metrics = harden_classifier(job, digits_classifier_file, stores, tmp_path / "hardened.safetensors",
                                      "shards-harden")
    assert metrics["epoch"] == 2 and not info.reject_class
    # Rank 0 read its half of the training rows in the last epoch, through a window of 100 rows.
    assert metrics["counterfeit_rows"] == train_rows // 2
    # and trained on its half of the real training split (a shard too, padded to ceil(rows / 2))
    assert metrics["train_rows"] == -(-len(digits.train_labels) // 2)


def test_one_worker_on_a_pool_that_fits_trains_as_on_the_whole_pool(ray_cluster, tmp_path, digits,
                                                                     digits_classifier_file):
    stores = [noise_store(tmp_path / "a", "r0", 150, 1), noise_store(tmp_path / "b", "r1", 150, 2)]
    job = load_job(None, {"run.output_dir": str(tmp_path), "run.run_id": "same", "harden.mode": "adaptive",
                          "harden.epochs": 1, "harden.outliers_per_step": 8, "harden.pgd_steps": 1,
                          "harden.batch_size": 256})
    output = tmp_path / "hardened.safetensors"
    _, metrics = harden_classifier(job, digits_classifier_file, stores, output, "same-harden")
    split = split_counterfeits(stores, (1, 8, 8), 10, 0.3, 0)
    assert metrics["counterfeit_rows"] == len(split.train_ids)
    baseline, _ = load_classifier(digits_classifier_file)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the Ray worker (1 CPU)
    try:
        expected = fine_tune_in_process(baseline, job.harden, digits, split.train_images,
                                        fit_far_rule(FarRule(), digits))
    finally:
        torch.set_num_threads(threads)
    hardened, _ = load_classifier(output)
    hardened = hardened.classifier  # the trained model inside its data guard (harden.guard auto on digits)
    for name, value in expected.state_dict().items():
        torch.testing.assert_close(hardened.state_dict()[name], value, rtol=1e-5, atol=1e-6)


def test_a_small_pool_read_by_the_driver_gives_the_rows_the_read_tasks_give(ray_cluster, tmp_path, monkeypatch):
    stores = [noise_store(tmp_path / "a", "r0", 300, 1), noise_store(tmp_path / "b", "r1", 200, 2)]
    scan = scan_pool(stores, (1, 8, 8), 10, 0.3, 0)
    job = load_job(None, {"run.output_dir": str(tmp_path)})
    in_memory = counterfeit_dataset(scan, job.harden)
    assert "_read_training_rows" not in str(in_memory)  # no read task: the blocks are the driver's arrays
    monkeypatch.setattr(harden_module, "POOL_IN_MEMORY_BYTES", scan.train_rows * 64 - 1)  # one byte short
    streamed = counterfeit_dataset(scan, job.harden)
    assert "_read_training_rows" in str(streamed)
    import ray.data

    # plan order, as the workers receive it (`ingest_config`)
    monkeypatch.setattr(ray.data.DataContext.get_current().execution_options, "preserve_order", True)
    rows = [np.stack([row["image"] for row in dataset.take_all()]) for dataset in (in_memory, streamed)]
    assert len(rows[0]) == scan.train_rows == len(split_counterfeits(stores, (1, 8, 8), 10, 0.3, 0).train_ids)
    np.testing.assert_array_equal(rows[0], rows[1])  # the same rows, in the same (file) order
