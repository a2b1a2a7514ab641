"""Classifier training under Ray Train: the data reaches the workers as Ray Dataset shards
(`ccc_ray/orchestration/training_data.py`: no worker loads the whole set, nor needs the source's files);
each worker trains a DDP replica on its share, rank 0 scores the test split, checkpoints each epoch."""

from __future__ import annotations

from dataclasses import asdict

import ray.train
import ray.train.torch
import torch
from torch.utils.data import DataLoader, TensorDataset

from ccc_ray.classifiers.build import build_classifier
from ccc_ray.classifiers.training import accuracy, train_epoch
from ccc_ray.classifiers.weights import (
    ClassifierInfo,
    load_initial_weights,
    save_classifier,
)
from ccc_ray.job import JobConfig
from ccc_ray.orchestration.checkpoints import (
    checkpoint_to_report,
    load_checkpoint_state,
)
from ccc_ray.orchestration.ray_runtime import claim_run, fit, quiet_worker_logs
from ccc_ray.orchestration.training_data import TrainingDataInfo, ingest_config, training_datasets, worker_data
from ccc_ray.store.files import ensure_writable_dir

AUGMENT_MAX_SHIFT = 1  # pixels; small translations help small-image classifiers generalise


def classifier_train_loop(loop_config: dict) -> None:
    job: JobConfig = loop_config["job"]
    info: TrainingDataInfo = loop_config["data"]
    quiet_worker_logs()
    cfg = job.classifier
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    dataset = worker_data(info, rank, world)  # its share of the training split; the test split on rank 0

    torch.manual_seed(cfg.seed)
    model = build_classifier(cfg, info.image_shape, info.num_classes)
    load_initial_weights(model, cfg, info.image_shape, info.num_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    start_epoch = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        state = load_checkpoint_state(checkpoint)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch = int(state["epoch"])
        if rank == 0:
            print(f"[train-classifier] resumed from the checkpoint after epoch {start_epoch}", flush=True)
    model = ray.train.torch.prepare_model(model)
    # The share is this worker's alone (no DistributedSampler): a new shuffle of it each epoch.
    loader = DataLoader(TensorDataset(dataset.train_images, dataset.train_labels),
                        batch_size=max(1, cfg.batch_size // world), shuffle=True,
                        generator=torch.Generator().manual_seed(cfg.seed + rank * 10_007))
    for epoch in range(start_epoch, cfg.epochs):
        augment = torch.Generator().manual_seed(cfg.seed * 1_000_003 + rank * 10_007 + epoch)
        loss = train_epoch(model, loader, optimizer, device, AUGMENT_MAX_SHIFT, augment)
        metrics = {"epoch": epoch + 1, "train_loss": loss, "train_rows": len(dataset.train_labels)}
        if rank == 0:  # only rank 0's metrics are reported
            metrics["test_accuracy"] = accuracy(model, dataset.test_images, dataset.test_labels, device)
            print(f"[train-classifier] epoch {epoch + 1}/{cfg.epochs} loss {loss:.4f} "
                  f"test accuracy {metrics['test_accuracy']:.4f}", flush=True)
        inner = getattr(model, "module", model)
        state = {"model": inner.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch + 1}
        with checkpoint_to_report(state if rank == 0 else None) as ckpt:
            ray.train.report(metrics, checkpoint=ckpt)


def train_classifier(job: JobConfig) -> tuple[ClassifierInfo, dict]:
    """Train (or resume) the classifier of `job` and write it to `run.classifier_file`."""
    info, datasets = training_datasets(job.data)  # bad data fails here, before Ray starts
    probe = build_classifier(job.classifier, info.image_shape, info.num_classes)
    load_initial_weights(probe, job.classifier, info.image_shape, info.num_classes)
    output = job.run.classifier_file
    ensure_writable_dir(output.parent, "run.classifier_path")
    ensure_writable_dir(job.run.run_dir, "run.output_dir")
    name = f"{job.run.run_id}-classifier"
    claim_run(job.run, name, {"classifier": asdict(job.classifier), "data": asdict(job.data)})
    result = fit(classifier_train_loop, {"job": job, "data": info}, job.run, name, "classifier training",
                 datasets=datasets(), dataset_config=ingest_config())
    probe.load_state_dict(load_checkpoint_state(result.checkpoint)["model"])
    saved = save_classifier(output, probe, job.classifier, info.image_shape, list(info.class_names), job.data.name)
    return saved, dict(result.metrics or {})
