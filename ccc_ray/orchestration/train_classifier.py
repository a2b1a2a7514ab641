"""Classifier training under Ray Train: every worker loads the data itself (the digits ship in the wheel;
other sources need their root on every node), trains a DDP replica on its shard, checkpoints each epoch."""

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
from ccc_ray.data.sources import load_dataset
from ccc_ray.job import JobConfig
from ccc_ray.orchestration.checkpoints import (
    checkpoint_to_report,
    load_checkpoint_state,
)
from ccc_ray.orchestration.ray_runtime import claim_run, fit, quiet_worker_logs
from ccc_ray.store.files import ensure_writable_dir

AUGMENT_MAX_SHIFT = 1  # pixels; small translations help small-image classifiers generalise


def classifier_train_loop(loop_config: dict) -> None:
    job: JobConfig = loop_config["job"]
    quiet_worker_logs()
    cfg = job.classifier
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    dataset = load_dataset(job.data)

    torch.manual_seed(cfg.seed)
    model = build_classifier(cfg, dataset.image_shape, dataset.num_classes)
    load_initial_weights(model, cfg, dataset.image_shape, dataset.num_classes)
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
    loader = DataLoader(TensorDataset(dataset.train_images, dataset.train_labels),
                        batch_size=max(1, cfg.batch_size // world), shuffle=True,
                        generator=torch.Generator().manual_seed(cfg.seed))
    loader = ray.train.torch.prepare_data_loader(loader, move_to_device=False)
    for epoch in range(start_epoch, cfg.epochs):
        sampler = getattr(loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):  # DistributedSampler: a different shuffle each epoch
            sampler.set_epoch(epoch)
        augment = torch.Generator().manual_seed(cfg.seed * 1_000_003 + rank * 10_007 + epoch)
        loss = train_epoch(model, loader, optimizer, device, AUGMENT_MAX_SHIFT, augment)
        test_accuracy = accuracy(model, dataset.test_images, dataset.test_labels, device)
        if rank == 0:
            print(f"[train-classifier] epoch {epoch + 1}/{cfg.epochs} loss {loss:.4f} "
                  f"test accuracy {test_accuracy:.4f}", flush=True)
        inner = getattr(model, "module", model)
        state = {"model": inner.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch + 1}
        with checkpoint_to_report(state if rank == 0 else None) as ckpt:
            ray.train.report({"epoch": epoch + 1, "train_loss": loss, "test_accuracy": test_accuracy},
                             checkpoint=ckpt)


def train_classifier(job: JobConfig) -> tuple[ClassifierInfo, dict]:
    """Train (or resume) the classifier of `job` and write it to `run.classifier_file`."""
    dataset = load_dataset(job.data)  # fail fast on the driver, before any worker starts
    probe = build_classifier(job.classifier, dataset.image_shape, dataset.num_classes)
    load_initial_weights(probe, job.classifier, dataset.image_shape, dataset.num_classes)
    output = job.run.classifier_file
    ensure_writable_dir(output.parent, "run.classifier_path")
    ensure_writable_dir(job.run.run_dir, "run.output_dir")
    name = f"{job.run.run_id}-classifier"
    claim_run(job.run, name, {"classifier": asdict(job.classifier), "data": asdict(job.data)})
    result = fit(classifier_train_loop, {"job": job}, job.run, name, "classifier training")
    probe.load_state_dict(load_checkpoint_state(result.checkpoint)["model"])
    info = save_classifier(output, probe, job.classifier, dataset.image_shape, dataset.class_names, job.data.name)
    return info, dict(result.metrics or {})
