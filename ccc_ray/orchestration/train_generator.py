"""Generator training under Ray Train: `train_loop_per_worker` plus the driver that starts and resumes it.

Each worker holds the frozen classifier and a DDP-wrapped generator; the global batch is split across
workers so 1 and N workers see the same number of samples per step. Latents for step s on rank r come
from a generator seeded by (seed, r, s), so a resumed run draws exactly what the uninterrupted one would.
"""

from __future__ import annotations

from dataclasses import asdict

import ray.train
import ray.train.torch
import torch

from ccc_ray.classifiers.weights import ClassifierInfo, classifier_from_bytes
from ccc_ray.data.sources import load_dataset
from ccc_ray.errors import CccError
from ccc_ray.job_config import JobConfig
from ccc_ray.methods import GENERATOR_METHODS
from ccc_ray.methods.generator_file import save_generator
from ccc_ray.orchestration.checkpoints import (
    checkpoint_to_report,
    load_checkpoint_state,
)
from ccc_ray.orchestration.ray_runtime import claim_run, fit, quiet_worker_logs
from ccc_ray.store.files import ensure_writable_dir


def step_generator(seed: int, rank: int, step: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + rank * 10_007 + step)


def generator_train_loop(loop_config: dict) -> None:
    """Runs on every Ray Train worker."""
    quiet_worker_logs()
    job: JobConfig = loop_config["job"]
    method_name: str = loop_config["method"]
    cfg = job.generator
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()

    classifier, info = classifier_from_bytes(loop_config["classifier_bytes"], loop_config["classifier_path"])
    classifier.to(device).eval().requires_grad_(False)
    method_cls, _ = GENERATOR_METHODS[method_name]
    method = method_cls(cfg, info.image_shape, info.num_classes, device)
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        method.load_state_dict(load_checkpoint_state(checkpoint))
        if rank == 0:
            print(f"[train-generator] resumed from the checkpoint at step {method.step}", flush=True)
    method.generator = ray.train.torch.prepare_model(method.generator)
    per_worker_batch = max(1, cfg.batch_size // world)

    every = job.run.checkpoint_every
    scoring = loop_config.get("objective")  # set by `ccc-ray tune`: score each checkpoint for the scheduler
    if scoring and rank == 0:
        from ccc_ray.data.sources import load_dataset
        from ccc_ray.quality import nearest_distances

        dataset = load_dataset(job.data)
        test_distance = float(nearest_distances(dataset.test_images, dataset.train_images).mean())
    while method.step < cfg.steps:
        parts = method.training_step(classifier, step_generator(cfg.seed, rank, method.step, device), per_worker_batch)
        if method.step % every == 0 or method.step == cfg.steps:
            metrics = {"step": method.step, **{f"loss/{k}" if k != "confidence" else k: v for k, v in parts.items()}}
            if scoring and rank == 0:
                from ccc_ray.tuning.objective import generator_objective

                metrics.update(generator_objective(method, classifier, dataset, scoring["per_class"],
                                                   scoring["threshold"], scoring["seed"], device, test_distance))
            if rank == 0:
                print(f"[train-generator] step {method.step}/{cfg.steps} loss {parts['total']:.4f} "
                      f"confidence {parts['confidence']:.4f}"
                      + (f" objective {metrics['objective']:.4f}" if scoring else ""), flush=True)
            with checkpoint_to_report(method.state_dict() if rank == 0 else None) as ckpt:
                ray.train.report(metrics, checkpoint=ckpt)


def train_generator(job: JobConfig, method_name: str = "inversion") -> tuple[str, dict]:
    """Train (or resume, or find finished) the generator of `job`; writes the generator file and returns
    (its path, the last reported metrics)."""
    classifier_path = job.run.classifier_file
    if not classifier_path.is_file():
        raise CccError(f"run.classifier_path: {str(classifier_path)!r} does not exist; "
                       "run `ccc-ray train-classifier` first or point --run.classifier_path at a classifier file")
    classifier_bytes = classifier_path.read_bytes()
    dataset = load_dataset(job.data)  # fail fast on the driver, before any worker starts
    _, info = classifier_from_bytes(classifier_bytes, str(classifier_path), dataset.image_shape, dataset.num_classes)
    _check_data_matches(job, info)
    ensure_writable_dir(job.run.generator_file(method_name).parent, "run.generator_path")
    ensure_writable_dir(job.run.run_dir, "run.output_dir")
    name = f"{job.run.run_id}-generator-{method_name}"
    claim_run(job.run, name, {"generator": asdict(job.generator), "classifier_sha256": info.sha256})
    loop_config = {"job": job, "method": method_name, "classifier_bytes": classifier_bytes,
                   "classifier_path": str(classifier_path)}
    result = fit(generator_train_loop, loop_config, job.run, name, "generator training")
    method_cls, _ = GENERATOR_METHODS[method_name]
    method = method_cls(job.generator, info.image_shape, info.num_classes)
    method.load_state_dict(load_checkpoint_state(result.checkpoint))
    output = job.run.generator_file(method_name)
    save_generator(output, method, info.image_shape, list(info.class_names), info.sha256)
    return str(output), dict(result.metrics or {})


def _check_data_matches(job: JobConfig, info: ClassifierInfo) -> None:
    if info.data_name != job.data.name:
        raise CccError(f"data.name: the classifier was trained on {info.data_name!r}, not {job.data.name!r}")
