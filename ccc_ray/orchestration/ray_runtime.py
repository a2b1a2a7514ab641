"""Connecting to Ray and turning our RunSettings into Ray Train's ScalingConfig and RunConfig."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import ray
import ray.train

from ccc_ray.errors import CccError
from ccc_ray.job import RunSettings


def ensure_ray() -> None:
    """Join the cluster named by RAY_ADDRESS (as under `ray job submit`), or start a local one quietly. The
    Train settings below apply also where the caller started Ray itself (a notebook, a test): Train reads
    them from this process's environment when a run starts."""
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    # Our workers print one progress line per checkpoint; Train's print patch would echo each line twice.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    # A worker imports torch before it joins; on a busy node that can take longer than Train's 60 s default.
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "300")
    # Train's controller collects worker reports every 2 s by default and a worker holds one uncollected
    # report, so each per-epoch report blocked ~1.3 s: 2.9x a plain loop's epoch on digits; 0.1 s: 0.79x
    # (docs/BENCHMARKS.md, issue 16). The driver's value reaches the controller, on a remote cluster too.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")
    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=True)
    else:
        # The dashboard hosts the State API that Train's placement-group cleaner polls; without it every
        # run logs a warning per second.
        ray.init(log_to_driver=True, configure_logging=True, logging_level="warning")


def resolve_use_gpu(run: RunSettings) -> bool:
    """`run.use_gpu` if set, else whether the cluster has any GPU."""
    if run.use_gpu is not None:
        return run.use_gpu
    return ray.cluster_resources().get("GPU", 0) > 0


def actor_pool_size(run: RunSettings, cpus_per_actor: float) -> int:
    """Actors of a Ray Data pool that fill the cluster: one per GPU when `run.use_gpu` resolves true, else
    one per `cpus_per_actor` CPUs (at least one)."""
    resources = ray.cluster_resources()
    if resolve_use_gpu(run):
        return max(1, int(resources.get("GPU", 0)))
    return max(1, int(resources.get("CPU", 1) // cpus_per_actor))


def scaling_config(run: RunSettings) -> ray.train.ScalingConfig:
    use_gpu = resolve_use_gpu(run)
    resources = {"CPU": run.cpus_per_worker}
    if use_gpu:
        resources["GPU"] = 1
    return ray.train.ScalingConfig(num_workers=run.num_workers, use_gpu=use_gpu, resources_per_worker=resources)


def run_config(run: RunSettings, name: str) -> ray.train.RunConfig:
    """Same `name` and storage path on a second start: Ray Train V2 restores the run's latest checkpoint."""
    return ray.train.RunConfig(
        name=name, storage_path=run.ray_storage,
        failure_config=ray.train.FailureConfig(max_failures=run.max_failures),
        logging_config=ray.train.LoggingConfig(log_level=os.environ.get("CCC_RAY_TRAIN_LOG_LEVEL", "WARNING")),
        checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2))


def claim_run(run: RunSettings, name: str, settings: dict) -> bool:
    """Record the settings a Train run was started with; refuse to resume it with different ones.

    Returns True when an earlier start of this run exists (so Ray will resume it). Only local storage
    paths are checked; remote ones are trusted to follow the same run id discipline.
    """
    if "://" in run.ray_storage:
        return False
    record = Path(run.ray_storage) / name / "ccc_run_settings.json"
    wanted = json.dumps(settings, sort_keys=True, default=str)
    if record.is_file():
        if record.read_text() != wanted:
            digest = hashlib.sha256(record.read_text().encode()).hexdigest()[:8]
            raise CccError(f"run.run_id: run {run.run_id!r} ({name}) was started with other settings "
                           f"(record {digest}); pass a new --run.run_id, or the same settings to resume it")
        return True
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(wanted)
    return False


def training_failed(error: Exception, what: str) -> CccError:
    """One readable line for a failed Train run, keeping our own CccError messages intact."""
    text = str(error)
    for line in text.splitlines():
        if "CccError:" in line:
            return CccError(line.split("CccError:", 1)[1].strip())
    return CccError(f"{what} failed: {text.splitlines()[0] if text else type(error).__name__} "
                    "(see the Ray worker logs above)")


def fit(train_loop, loop_config: dict, run: RunSettings, name: str, what: str, datasets: dict | None = None,
        dataset_config: ray.train.DataConfig | None = None):
    """Run `train_loop` under a TorchTrainer named `name`; returns the Result, which has a checkpoint.

    `datasets` (Ray Datasets, by name) reach the workers as shards: `ray.train.get_dataset_shard(name)`.
    """
    from ray.train.torch import TorchTrainer

    ensure_ray()
    trainer = TorchTrainer(train_loop, train_loop_config=loop_config, scaling_config=scaling_config(run),
                           run_config=run_config(run, name), datasets=datasets, dataset_config=dataset_config)
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as error:
        raise training_failed(error, what) from None
    if result.checkpoint is None:
        raise CccError(f"{what} reported no checkpoint")
    return result


def quiet_worker_logs() -> None:
    """Call first in a train loop: Train logs every report (metrics and checkpoint path) at INFO under a
    logger named after its source file, outside the `ray.train` level that LoggingConfig sets."""
    import logging

    from ray.train.v2._internal.execution import context

    if os.environ.get("CCC_RAY_TRAIN_LOG_LEVEL", "WARNING").upper() != "INFO":
        logging.getLogger(context.__file__).setLevel(logging.WARNING)


def versions() -> dict:
    """Library versions for a store's or report's metadata: enough to reproduce the run."""
    import pyarrow
    import torch

    import ccc_ray

    return {"ccc_ray": ccc_ray.__version__, "torch": torch.__version__, "ray": ray.__version__,
            "pyarrow": pyarrow.__version__}
