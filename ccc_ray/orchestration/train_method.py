"""Training of every trained method under Ray Train: `train_loop_per_worker` plus the driver that starts,
resumes and saves it. Nothing here knows which method it trains: it reads the method interface
(`ccc_ray/methods/base.py`).

Each worker holds the frozen classifier and the method; every module the method owns is wrapped for
data parallelism (`prepare_model`) and all of them are checkpointed. The global batch is split across
workers so 1 and N workers see the same number of samples per step; random draws for step s on rank r
come from a generator seeded by (seed, rank, step), and a method's real-data batches from a sampler
seeded by its config and set to the step's epoch, so a resumed run draws exactly what the
uninterrupted one would.
"""

from __future__ import annotations

from dataclasses import asdict

import ray.train
import ray.train.torch
import torch

from ccc_ray.classifiers.weights import ClassifierInfo, classifier_from_bytes, save_classifier
from ccc_ray.data.sources import load_dataset
from ccc_ray.errors import CccError
from ccc_ray.job import JobConfig
from ccc_ray.methods import (MethodContext, TrainedMethod, method_class, real_batches, real_data_loader,
                             step_generator)
from ccc_ray.methods.generator_file import save_generator
from ccc_ray.orchestration.checkpoints import checkpoint_to_report, load_checkpoint_state
from ccc_ray.orchestration.ray_runtime import claim_run, fit, quiet_worker_logs
from ccc_ray.store.files import ensure_writable_dir
from ccc_ray.tuning.objective import generator_objective

TRAINED_KINDS = ("generator", "joint")


def build_method(job: JobConfig, cls: type[TrainedMethod], info: ClassifierInfo, classifier,
                 device: torch.device | str) -> TrainedMethod:
    """The method of `job` against `classifier`: the same construction on every worker and the driver."""
    context = MethodContext(info.image_shape, info.num_classes, classifier, device, job.keep.confidence_bar)
    return cls(job.method_config(cls.name), context)


def method_train_loop(loop_config: dict) -> None:
    """Runs on every Ray Train worker."""
    quiet_worker_logs()
    job: JobConfig = loop_config["job"]
    cls: type[TrainedMethod] = loop_config["method_class"]  # shipped as a class: plug-in methods need no registry here
    config = job.method_config(cls.name)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()

    classifier, info = classifier_from_bytes(loop_config["classifier_bytes"], loop_config["classifier_path"])
    classifier.to(device).eval().requires_grad_(False)
    method = build_method(job, cls, info, classifier, device)
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        method.load_state_dict(load_checkpoint_state(checkpoint))
        if rank == 0:
            print(f"[train-generator] resumed from the checkpoint at step {method.step}", flush=True)
    method.use_wrapped(ray.train.torch.prepare_model)
    per_worker_batch = max(1, config.batch_size // world)

    dataset = load_dataset(job.data)
    training_data = method.training_data(dataset)
    batches = None
    if training_data is not None:
        loader, sampler = real_data_loader(cls.name, training_data, per_worker_batch, config.seed, rank, world)
        batches = real_batches(ray.train.torch.prepare_data_loader(loader, add_dist_sampler=False), sampler,
                               method.step)

    every = job.run.checkpoint_every
    scoring = loop_config.get("objective")  # set by `ccc-ray tune`: score each checkpoint for the scheduler
    while method.step < config.steps:
        batch = next(batches) if batches is not None else None
        parts = method.training_step(batch, step_generator(config.seed, rank, method.step, device), per_worker_batch)
        if method.step % every == 0 or method.step == config.steps:
            metrics = {"step": method.step, **{f"loss/{k}" if k != "confidence" else k: v for k, v in parts.items()}}
            if scoring and rank == 0:  # sampling uses the plain modules: no collective call while others wait
                metrics.update(generator_objective(method, classifier, dataset, scoring["per_class"],
                                                   job.keep.confidence_bar, scoring["seed"], device))
            if rank == 0:
                print(f"[train-generator] {cls.name} step {method.step}/{config.steps} loss {parts['total']:.4f} "
                      f"confidence {parts.get('confidence', float('nan')):.4f}"
                      + (f" objective {metrics['objective']:.4f}" if scoring else ""), flush=True)
            with checkpoint_to_report(method.state_dict() if rank == 0 else None) as ckpt:
                ray.train.report(metrics, checkpoint=ckpt)


def loop_config_for(job: JobConfig, method_name: str) -> tuple[dict, ClassifierInfo]:
    """Check the job on the driver (bad input fails before any worker starts) and build the loop's config."""
    cls = method_class(method_name, "generate.method", kinds=TRAINED_KINDS)
    classifier_path = job.run.classifier_file
    if not classifier_path.is_file():
        raise CccError(f"run.classifier_path: {str(classifier_path)!r} does not exist; "
                       "run `ccc-ray train-classifier` first or point --run.classifier_path at a classifier file")
    classifier_bytes = classifier_path.read_bytes()
    dataset = load_dataset(job.data)
    _, info = classifier_from_bytes(classifier_bytes, str(classifier_path), dataset.image_shape, dataset.num_classes)
    if info.data_name != job.data.name:
        raise CccError(f"data.name: the classifier was trained on {info.data_name!r}, not {job.data.name!r}")
    return {"job": job, "method_class": cls, "classifier_bytes": classifier_bytes,
            "classifier_path": str(classifier_path)}, info


def train_method(job: JobConfig, method_name: str | None = None) -> tuple[str, dict]:
    """Train (or resume, or find finished) the method of `job`; writes its generator file (and, for a
    joint method, its trained classifier) and returns (the generator file's path, the last metrics)."""
    method_name = method_name or job.generate.method
    loop_config, info = loop_config_for(job, method_name)
    output = job.run.generator_file(method_name)
    ensure_writable_dir(output.parent, "run.generator_path")
    ensure_writable_dir(job.run.run_dir, "run.output_dir")
    name = f"{job.run.run_id}-generator-{method_name}"
    claim_run(job.run, name, {"method": method_name, "config": asdict(job.method_config(method_name)),
                              "classifier_sha256": info.sha256})
    result = fit(method_train_loop, loop_config, job.run, name, "generator training")
    classifier, _ = classifier_from_bytes(loop_config["classifier_bytes"], loop_config["classifier_path"])
    method = build_method(job, loop_config["method_class"], info, classifier.eval().requires_grad_(False), "cpu")
    method.load_state_dict(load_checkpoint_state(result.checkpoint))
    return str(output), {**(result.metrics or {}), **write_method_files(job, method, info)}


def write_method_files(job: JobConfig, method: TrainedMethod, info: ClassifierInfo) -> dict:
    """Write a trained method's generator file and, for a joint method, its trained classifier (with a reject
    class) to the run folder; returns the classifier's path and fingerprint for the run's metrics."""
    save_generator(job.run.generator_file(method.name), method, list(info.class_names), info.sha256)
    if not method.trains_classifier:
        return {}
    classifier_output = job.run.run_dir / f"classifier-{method.name}.safetensors"
    joint = save_classifier(classifier_output, method.trained_classifier(), info.config, info.image_shape,
                            list(info.class_names), info.data_name, reject_class=True)
    return {"trained_classifier_file": str(classifier_output), "trained_classifier_sha256": joint.sha256}
