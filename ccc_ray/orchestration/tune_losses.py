"""`ccc-ray tune`: Ray Tune over a trained method's loss weights, one Ray Train run per trial (Train V2 style).

Each Tune trial is a small function that builds its JobConfig from the base job plus the drawn values
(checked like command-line flags), then runs the generator's TorchTrainer; the training loop scores
every checkpoint with the objective (ccc_ray/tuning/objective.py) and TuneReportCallback hands those
reports to Tune, so ASHA can stop poor trials early. The search lives under
`<run>/tune/<run_id>-tune-<method>`; starting the same search again resumes it (Tuner.restore) without
repeating finished trials.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import ray
import ray.train
from ray import tune

from ccc_ray.errors import CccError
from ccc_ray.job import JobConfig, apply_overrides, dump_job
from ccc_ray.orchestration.ray_runtime import claim_run, ensure_ray
from ccc_ray.orchestration.train_method import loop_config_for, method_train_loop
from ccc_ray.store.files import atomic_write_bytes, ensure_writable_dir, join_location
from ccc_ray.tuning.objective import objective_parts
from ccc_ray.tuning.search_space import default_space_file, load_search_space

PART_COLUMNS = tuple(objective_parts(0.0, 0.0, 0.0))


def tune_trial(params: dict, job: JobConfig, loop_config: dict, starts_dir: str, trials_storage: str) -> None:
    """One trial: the job with the drawn values, trained by a TorchTrainer that reports to Tune."""
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    trial_id = tune.get_context().get_trial_id()
    Path(starts_dir, f"{trial_id}-{time.time_ns()}").touch()  # lets a test prove finished trials never rerun
    trial_job = apply_overrides(job, params)
    settings = trial_job.tune
    gpus = trial_gpus(trial_job)
    resources = {"CPU": settings.cpus_per_trial, **({"GPU": gpus} if gpus else {})}
    scoring = {"per_class": settings.score_per_class, "seed": trial_job.generate.seed}
    trainer = TorchTrainer(
        method_train_loop,
        train_loop_config={**loop_config, "job": trial_job, "objective": scoring},
        scaling_config=ray.train.ScalingConfig(num_workers=trial_job.run.num_workers,
                                               use_gpu=gpus > 0, resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=f"trial-{trial_id}", storage_path=trials_storage,
            callbacks=[TuneReportCallback()],
            logging_config=ray.train.LoggingConfig(log_level="WARNING")))
    trainer.fit()


def to_tune(space: dict[str, dict]) -> dict:
    """The search space as Ray Tune sampling objects."""
    makers = {"uniform": lambda s: tune.uniform(s["low"], s["high"]),
              "loguniform": lambda s: tune.loguniform(s["low"], s["high"]),
              "randint": lambda s: tune.randint(int(s["low"]), int(s["high"])),
              "choice": lambda s: tune.choice(s["values"])}
    return {name: makers[spec["type"]](spec) for name, spec in space.items()}


def trial_gpus(job: JobConfig) -> float:
    """GPUs per Train worker of a trial: tune.gpus_per_trial, or one when run.use_gpu asks for GPUs."""
    if job.tune.gpus_per_trial > 0:
        return job.tune.gpus_per_trial
    return 1.0 if job.run.use_gpu else 0.0


def tune_storage(job: JobConfig) -> str:
    """Where the search and its trials live: under run.storage_path (NFS, s3://) when set, else the run folder."""
    if job.run.storage_path:
        return join_location(job.run.ray_storage, "tune")
    return str(job.run.run_dir / "tune")


def check_trial_fits(job: JobConfig) -> None:
    """Refuse in one line a search whose single trial cannot fit the cluster (Tune would wait forever)."""
    settings, workers = job.tune, job.run.num_workers
    resources = ray.cluster_resources()
    need_cpu = workers * settings.cpus_per_trial + 0.01  # + the trial function's own small reservation
    need_gpu = workers * trial_gpus(job)
    missing = []
    if resources.get("CPU", 0) < need_cpu:
        missing.append(f"{need_cpu:g} CPUs ({workers} worker(s) x tune.cpus_per_trial {settings.cpus_per_trial:g}), "
                       f"the cluster has {resources.get('CPU', 0):g}")
    if resources.get("GPU", 0) < need_gpu:
        missing.append(f"{need_gpu:g} GPUs, the cluster has {resources.get('GPU', 0):g}")
    if missing:
        raise CccError(f"tune: one trial needs {' and '.join(missing)}; lower --tune.cpus_per_trial (e.g. "
                       f"{resources.get('CPU', 1) / max(workers, 1) * 0.9:.2g}) or --run.num_workers, or add nodes")


def run_tune(job: JobConfig, progress=print) -> dict:
    """Run (or resume) the search; writes trials.csv / trials.parquet and best.yaml; returns a summary."""
    method = job.generate.method
    space_file = Path(job.tune.search_space) if job.tune.search_space else default_space_file(method)
    if not space_file.is_file():
        raise CccError(f"tune.search_space: {method} has no default search space ({str(space_file)!r}); "
                       "give one with --tune.search_space")
    space = load_search_space(space_file)  # every bad space fails here, before Ray starts
    loop_config, _ = loop_config_for(job, method)
    storage = tune_storage(job)
    ensure_writable_dir(storage, "run.storage_path" if job.run.storage_path else "run.output_dir")
    name = f"{job.run.run_id}-tune-{method}"
    claim_run(dataclasses.replace(job.run, storage_path=str(storage)), name,
              {"job": dataclasses.asdict(job), "space": space})
    experiment = join_location(storage, name)
    starts = ensure_writable_dir(job.run.run_dir / "tune" / f"{name}-starts", "run.output_dir")
    ensure_ray()
    check_trial_fits(job)
    reports = max(1, job.method_config(method).steps // job.run.checkpoint_every)
    trainable = tune.with_resources(
        tune.with_parameters(tune_trial, job=job, loop_config=loop_config, starts_dir=str(starts),
                             trials_storage=str(join_location(storage, "trials"))),
        {"CPU": 0.01})  # the trial function only waits; its Train workers ask for the CPUs and GPUs
    if tune.Tuner.can_restore(str(experiment)):
        progress(f"[tune] resuming the search in {experiment}")
        tuner = tune.Tuner.restore(str(experiment), trainable=trainable, resume_errored=True)
    else:
        scheduler = None
        if job.tune.scheduler == "asha":
            from ray.tune.schedulers import ASHAScheduler

            scheduler = ASHAScheduler(max_t=reports, grace_period=min(job.tune.grace_period, reports),
                                      reduction_factor=job.tune.reduction_factor)
        from ray.tune.search import BasicVariantGenerator

        tuner = tune.Tuner(
            trainable, param_space=to_tune(space),
            # The concurrency bound goes to the search algorithm itself: Tune ignores TuneConfig's
            # max_concurrent_trials when a BasicVariantGenerator is passed in.
            tune_config=tune.TuneConfig(metric="objective", mode="max", num_samples=job.tune.num_samples,
                                        scheduler=scheduler,
                                        search_alg=BasicVariantGenerator(random_state=job.tune.seed,
                                                                         max_concurrent=job.tune.max_concurrent_trials)),
            run_config=tune.RunConfig(name=name, storage_path=str(storage), verbose=1))
    results = tuner.fit()
    return summarise(job, space, results, reports, experiment, progress)


def summarise(job: JobConfig, space: dict, results, reports: int, experiment: Path, progress) -> dict:
    rows = []
    for result in results:
        metrics = result.metrics or {}
        params = {name: (result.config or {}).get(name) for name in space}
        iterations = int(metrics.get("training_iteration", 0))
        status = "error" if result.error else ("completed" if iterations >= reports else "stopped early")
        rows.append({"trial_id": metrics.get("trial_id", Path(result.path).name), "status": status,
                     "reports": iterations, "step": metrics.get("step"),
                     **{part: metrics.get(part) for part in PART_COLUMNS}, **params})
    if not rows or all(row["objective"] is None for row in rows):
        raise CccError(f"tune: no trial reported an objective; see the trial logs under {experiment}")
    completed = [row for row in rows if row["status"] == "completed" and row["objective"] is not None]
    best = max(completed or [r for r in rows if r["objective"] is not None], key=lambda row: row["objective"])
    best_job = apply_overrides(job, {name: best[name] for name in space})
    run_dir = job.run.run_dir
    write_table(rows, run_dir / "tune-trials")
    best_file = run_dir / "tune-best.yaml"
    atomic_write_bytes(best_file, dump_job(best_job).encode())
    summary = {"trials": len(rows), "completed": len(completed),
               "stopped_early": sum(row["status"] == "stopped early" for row in rows),
               "errors": sum(row["status"] == "error" for row in rows), "best": best,
               "best_config": str(best_file), "trials_table": str(run_dir / "tune-trials.csv")}
    atomic_write_bytes(run_dir / "tune-summary.json", json.dumps(summary, indent=2, default=str).encode())
    for row in sorted(rows, key=lambda r: -(r["objective"] if r["objective"] is not None else -1e9)):
        progress(f"[tune] {row['trial_id']} {row['status']:>13} reports {row['reports']} objective "
                 f"{row['objective'] if row['objective'] is None else round(row['objective'], 4)}")
    return summary


def write_table(rows: list[dict], stem: Path) -> None:
    """The trial table as CSV (for people) and Parquet (for tools), each written atomically."""
    import io

    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(rows)
    buffer = io.BytesIO()
    pacsv.write_csv(table, buffer)
    atomic_write_bytes(stem.with_suffix(".csv"), buffer.getvalue())
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    atomic_write_bytes(stem.with_suffix(".parquet"), buffer.getvalue())
