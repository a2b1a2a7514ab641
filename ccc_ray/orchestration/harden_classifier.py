"""Hardening under Ray Train: fine-tune the baseline classifier on its data plus counterfeits.

Each worker reads the stores itself (paths travel, not images) and splits the rows by id exactly as the
driver does, so only the training rows are ever seen here. One checkpoint per epoch; a second start of
the same run resumes from the last one.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict
from pathlib import Path

import ray.train
import ray.train.torch
import torch
from torch.utils.data import DataLoader, TensorDataset

from ccc_ray.classifiers.training import accuracy, random_shift
from ccc_ray.classifiers.weights import ClassifierInfo, classifier_from_bytes, save_classifier
from ccc_ray.data.sources import load_dataset
from ccc_ray.hardening.counterfeits import split_counterfeits
from ccc_ray.hardening.losses import balanced_class_weights, outlier_exposure_loss, reject_class_loss
from ccc_ray.hardening.widen import widen_classifier
from ccc_ray.errors import CccError
from ccc_ray.job import JobConfig
from ccc_ray.orchestration.checkpoints import checkpoint_to_report, load_checkpoint_state
from ccc_ray.orchestration.ray_runtime import claim_run, fit, quiet_worker_logs
from ccc_ray.store.files import ensure_writable_dir


def noise_images(count: int, image_shape: tuple[int, int, int], seed: int) -> torch.Tensor:
    """Half uniform pixel noise, half smooth noise (4x4 upsampled): the seed of the reject class."""
    generator = torch.Generator().manual_seed(seed)
    c, h, w = image_shape
    pixel = torch.rand(count // 2, c, h, w, generator=generator)
    coarse = torch.rand(count - count // 2, c, 4, 4, generator=generator)
    smooth = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    return torch.cat([pixel, smooth])


def hardening_model(baseline: torch.nn.Module, mode: str, image_shape: tuple[int, int, int]) -> torch.nn.Module:
    return widen_classifier(baseline, image_shape) if mode == "reject" else baseline


def harden_train_loop(loop_config: dict) -> None:
    quiet_worker_logs()
    job: JobConfig = loop_config["job"]
    cfg = job.harden
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    dataset = load_dataset(job.data)
    baseline, info = classifier_from_bytes(loop_config["baseline_bytes"], loop_config["baseline_path"],
                                           dataset.image_shape, dataset.num_classes)
    split = split_counterfeits(loop_config["stores"], dataset.image_shape, dataset.num_classes,
                               cfg.eval_fraction, cfg.split_seed)
    torch.manual_seed(cfg.seed)
    model = hardening_model(baseline, cfg.mode, dataset.image_shape)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate)
    start_epoch = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        state = load_checkpoint_state(checkpoint)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch = int(state["epoch"])
        if rank == 0:
            print(f"[harden] resumed from the checkpoint after epoch {start_epoch}", flush=True)
    k = dataset.num_classes
    if cfg.mode == "reject":
        outliers = torch.cat([split.train_images, noise_images(cfg.noise_images, dataset.image_shape, cfg.seed)])
        images = torch.cat([dataset.train_images, outliers])
        labels = torch.cat([dataset.train_labels, torch.full((len(outliers),), k, dtype=torch.int64)])
        class_weights = balanced_class_weights(torch.bincount(labels, minlength=k + 1)).to(device)
    else:
        images, labels = dataset.train_images, dataset.train_labels
    per_worker = max(1, cfg.batch_size // world)
    loader = DataLoader(TensorDataset(images, labels), batch_size=per_worker, shuffle=True,
                        generator=torch.Generator().manual_seed(cfg.seed))
    loader = ray.train.torch.prepare_data_loader(loader, move_to_device=False)
    outlier_loader = DataLoader(TensorDataset(split.train_images), batch_size=per_worker, shuffle=True,
                                generator=torch.Generator().manual_seed(cfg.seed + 1))
    model = ray.train.torch.prepare_model(model)
    shift = torch.Generator().manual_seed(cfg.seed + 2)
    for epoch in range(start_epoch, cfg.epochs):
        if world > 1:
            loader.sampler.set_epoch(epoch)
        model.train()
        total, count = 0.0, 0
        outlier_batches = itertools.cycle(outlier_loader)
        for batch_images, batch_labels in loader:
            batch_images = random_shift(batch_images, 1, shift).to(device)
            batch_labels = batch_labels.to(device)
            if cfg.mode == "reject":
                loss = reject_class_loss(model(batch_images), batch_labels, class_weights)
            else:
                (outlier_images,) = next(outlier_batches)
                logits = model(torch.cat([batch_images, outlier_images.to(device)]))
                loss = outlier_exposure_loss(logits[:len(batch_images)], batch_labels, logits[len(batch_images):],
                                             cfg.outlier_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(batch_labels)
            count += len(batch_labels)
        inner = getattr(model, "module", model)
        # argmax over every output: a test image sent to the reject class counts as an error.
        clean = accuracy(inner, dataset.test_images, dataset.test_labels, device)
        if rank == 0:
            print(f"[harden {cfg.mode}] epoch {epoch + 1}/{cfg.epochs} loss {total / max(count, 1):.4f} "
                  f"clean accuracy {clean:.4f}", flush=True)
        state = {"model": inner.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch + 1}
        with checkpoint_to_report(state if rank == 0 else None) as ckpt:
            ray.train.report({"epoch": epoch + 1, "train_loss": total / max(count, 1), "clean_accuracy": clean},
                             checkpoint=ckpt)


def harden_classifier(job: JobConfig, baseline_path: Path, stores: list[str], output: Path, name: str) -> tuple[ClassifierInfo, dict]:
    """Fine-tune the classifier at `baseline_path` with the counterfeits of `stores`; write it to `output`."""
    dataset = load_dataset(job.data)
    if not baseline_path.is_file():
        raise CccError(f"run.classifier_path: {str(baseline_path)!r} does not exist; run `ccc-ray train-classifier` first")
    raw = baseline_path.read_bytes()
    baseline, info = classifier_from_bytes(raw, str(baseline_path), dataset.image_shape, dataset.num_classes)
    if info.reject_class:
        raise CccError(f"{str(baseline_path)!r} already has a reject class; harden the baseline classifier")
    # Fail on the driver for bad stores before any worker starts.
    split_counterfeits(stores, dataset.image_shape, dataset.num_classes, job.harden.eval_fraction, job.harden.split_seed)
    ensure_writable_dir(output.parent, "run.output_dir")
    claim_run(job.run, name, {"harden": asdict(job.harden), "baseline": info.sha256, "stores": sorted(stores)})
    loop_config = {"job": job, "baseline_bytes": raw, "baseline_path": str(baseline_path), "stores": list(stores)}
    result = fit(harden_train_loop, loop_config, job.run, name, "hardening")
    model = hardening_model(baseline, job.harden.mode, dataset.image_shape)
    model.load_state_dict(load_checkpoint_state(result.checkpoint)["model"])
    hardened = save_classifier(output, model, info.config, dataset.image_shape, list(dataset.class_names),
                               job.data.name, reject_class=job.harden.mode == "reject")
    return hardened, dict(result.metrics or {})
