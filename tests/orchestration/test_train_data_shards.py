"""The real training data reaches the Train workers as Ray Dataset shards (issue 16, item 2): a Parquet
image source is read by Ray Data tasks, not by the driver; one worker trains exactly as the plain loop
that loaded the whole set; two workers each train on their own half."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from ccc_ray.classifiers.build import build_classifier
from ccc_ray.classifiers.training import accuracy, train_epoch
from ccc_ray.classifiers.weights import load_classifier, load_initial_weights
from ccc_ray.data import parquet_images
from ccc_ray.data.sources import DataConfig, load_dataset
from ccc_ray.job import load_job
from ccc_ray.orchestration.train_classifier import AUGMENT_MAX_SHIFT, train_classifier
from ccc_ray.orchestration.training_data import TEST, TRAIN, as_float, training_datasets
from ccc_ray.store import CounterfeitWriter, counterfeit_batch, reader


def digits_store(folder: Path, digits, files: int = 2) -> str:
    """The digits (train and test together) as a Parquet image store of `files` files, rows in row groups of 100."""
    images = torch.cat([digits.train_images, digits.test_images])
    labels = torch.cat([digits.train_labels, digits.test_labels]).numpy()
    pixels = (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for part, rows in enumerate(np.array_split(np.arange(len(labels)), files)):
        with CounterfeitWriter(folder, "digits", f"r{part}", {}, list(digits.class_names)) as writer:
            for start in range(0, len(rows), 100):
                index = rows[start:start + 100]
                writer.write(counterfeit_batch(pixels[index], labels[index], labels[index], np.full(len(index), 0.99),
                                               np.zeros(len(index)), index, run_id=f"r{part}", method="digits",
                                               classifier_sha256="ab" * 32, seed=part))
    return str(folder)


def refuse_whole_reads(monkeypatch) -> None:
    """Reading a store whole, or any image part, fails in this (the driver's) process; Ray's workers and
    Ray Data's tasks are other processes."""
    def refuse(*args, **kwargs):
        raise AssertionError("the driver read the data set's images")

    monkeypatch.setattr(reader, "_read_file", refuse)
    monkeypatch.setattr(parquet_images, "scan_store", refuse)


def rows_of(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """Its rows as a worker takes them (stored pixels divided by 255)."""
    batches = list(dataset.iter_batches(batch_size=None, batch_format="numpy"))
    return (torch.from_numpy(np.concatenate([as_float(b["image"]) for b in batches])),
            torch.from_numpy(np.concatenate([b["label"] for b in batches])))


def test_a_parquet_source_is_read_by_ray_data_tasks_as_load_dataset_reads_it(ray_cluster, tmp_path, digits,
                                                                            monkeypatch):
    root = digits_store(tmp_path / "store", digits, files=3)
    for image_size in (None, 6):  # rows as stored (uint8), or resized (float32)
        config = DataConfig(name="parquet", root=root, image_size=image_size)
        expected = load_dataset(config)
        refuse_whole_reads(monkeypatch)
        info, build = training_datasets(config)
        datasets = build()
        assert info.image_shape == expected.image_shape and list(info.class_names) == expected.class_names
        assert list(info.train_class_counts) == torch.bincount(expected.train_labels, minlength=10).tolist()
        assert info.test_rows == len(expected.test_labels)
        for name, images, labels in ((TRAIN, expected.train_images, expected.train_labels),
                                     (TEST, expected.test_images, expected.test_labels)):
            datasets[name].context.execution_options.preserve_order = True  # as Train's ingest reads it
            got_images, got_labels = rows_of(datasets[name])
            assert torch.equal(got_labels, labels) and torch.equal(got_images, images)  # same rows, same order
        monkeypatch.undo()


@pytest.mark.slow
def test_one_worker_trains_the_classifier_exactly_as_the_loop_on_the_whole_set(ray_cluster, tmp_path, digits):
    job = load_job(None, {"run.output_dir": str(tmp_path), "run.run_id": "one", "classifier.epochs": 2})
    info, metrics = train_classifier(job)
    trained, _ = load_classifier(job.run.classifier_file)

    # The loop as it was when each worker loaded the whole set, in this process at 1 thread (as the worker).
    cfg = job.classifier
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(cfg.seed)
        model = build_classifier(cfg, digits.image_shape, digits.num_classes)
        load_initial_weights(model, cfg, digits.image_shape, digits.num_classes)
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        loader = DataLoader(TensorDataset(digits.train_images, digits.train_labels), batch_size=cfg.batch_size,
                            shuffle=True, generator=torch.Generator().manual_seed(cfg.seed))
        for epoch in range(cfg.epochs):
            train_epoch(model, loader, optimizer, torch.device("cpu"), AUGMENT_MAX_SHIFT,
                        torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch))
    finally:
        torch.set_num_threads(threads)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(trained.state_dict()[name], value, rtol=0, atol=1e-6)
    assert metrics["train_rows"] == len(digits.train_labels)
    assert metrics["test_accuracy"] == pytest.approx(accuracy(model, digits.test_images, digits.test_labels))


@pytest.mark.slow
def test_two_workers_train_on_their_own_halves_and_the_driver_reads_no_image(ray_cluster, tmp_path, digits,
                                                                             monkeypatch):
    root = digits_store(tmp_path / "store", digits)
    refuse_whole_reads(monkeypatch)
    job = load_job(None, {"run.output_dir": str(tmp_path), "run.run_id": "two", "run.num_workers": 2,
                          "data.name": "parquet", "data.root": root, "classifier.epochs": 2})
    info, metrics = train_classifier(job)
    train_rows = len(digits.train_labels)  # the same split: the same labels, seed and fraction
    assert metrics["epoch"] == 2 and metrics["train_rows"] == -(-train_rows // 2)
    assert info.data_name == "parquet" and info.image_shape == (1, 8, 8)
    # Rows and labels stayed together on the way: far above chance (0.1) after two epochs on halves.
    assert metrics["test_accuracy"] > 0.5
