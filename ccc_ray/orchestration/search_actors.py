"""`ccc-ray attack` on Ray: independent search runs spread over actors that each hold the classifier once.

The driver checks everything first (data, classifier or ONNX model, targets), so bad input fails before
Ray starts and before anything is written. The classifier's file bytes go into Ray's object store once;
each `SearchActor` rebuilds the model from them and runs the searches it is given one after
another, with the whole population of each generation scored as one batch. The driver gathers the
results, re-scores the stored images and writes one Parquet file, `<store>/<method>-<run_id>.parquet`,
which `ccc-ray harden` pools like any other store.
"""

from __future__ import annotations

import time
from dataclasses import asdict

import ray

from ccc_ray.counterfeits.far import fit_far_rule
from ccc_ray.counterfeits.search import (
    AttackReport,
    AttackRun,
    AttackTarget,
    RunResult,
    build_search,
    check_targets_in_range,
    classifier_from_target,
    held_out,
    load_target,
    plan_runs,
    search_run,
    write_counterfeits,
    write_report,
)
from ccc_ray.data.sources import load_dataset
from ccc_ray.errors import CccError
from ccc_ray.job import AttackSettings, JobConfig
from ccc_ray.methods import SearchMethod, method_class
from ccc_ray.orchestration.ray_runtime import (
    ensure_ray,
    resolve_use_gpu,
    training_failed,
    versions,
)
from ccc_ray.store.files import ensure_writable_dir


@ray.remote
class SearchActor:
    """One Ray actor: the classifier, loaded once from the object store, and the method's searches against it."""

    def __init__(self, target: AttackTarget, method: type[SearchMethod], config, confidence_bar: float,
                 image_shape: tuple[int, int, int], device: str, threads: int, real):
        import torch

        torch.set_num_threads(threads)  # the actor's share of the node: its reserved CPUs
        classifier_fn = classifier_from_target(target, device, threads)
        self.method = build_search(method, config, classifier_fn, target.num_outputs, image_shape, confidence_bar,
                                   device, real)

    def run(self, run: AttackRun) -> RunResult:
        return search_run(self.method, run)


def actor_count(settings: AttackSettings, runs: int, use_gpu: bool) -> int:
    """Actors to start: `num_tasks` (0: one per run), at most what the cluster can hold at once.

    Every actor keeps its reservation until the attack ends, so more actors than fit would wait forever.
    """
    resources = ray.cluster_resources()
    if use_gpu and not resources.get("GPU"):
        raise CccError("run.use_gpu: true, but the Ray cluster has no GPU; leave it unset to use the CPUs")
    capacity = int(resources.get("GPU", 0)) if use_gpu else int(resources.get("CPU", 1) // settings.cpus_per_task)
    return max(1, min(settings.num_tasks or runs, runs, capacity))


def run_attack(job: JobConfig, progress=print) -> AttackReport:
    """The attack of `job.attack` against the run's classifier (or `attack.onnx_path`), written to the store."""
    cfg = job.attack
    method = method_class(cfg.method, "attack.method", kinds=("search",))
    dataset = load_dataset(job.data)
    target, classifier_fn = load_target(job.run.classifier_file, cfg.onnx_path, dataset, cfg.method)
    real = held_out(dataset)  # the real images that searches from real images start from
    build_search(method, job.method_config(cfg.method), classifier_fn, target.num_outputs, dataset.image_shape,
                 job.keep.confidence_bar, real=real)  # a method that cannot search this classifier fails here
    targets = check_targets_in_range(cfg.targets, dataset.num_classes)
    far = fit_far_rule(job.far, dataset, job.run.classifier_file, classifier_fn) if job.far.gate_store else None
    runs = plan_runs(targets, cfg.per_class, cfg.class_groups, cfg.seed)
    ensure_writable_dir(job.run.store_dir, "run.counterfeit_store")
    run_dir = ensure_writable_dir(job.run.run_dir, "run.output_dir")

    ensure_ray()
    start = time.perf_counter()
    use_gpu = resolve_use_gpu(job.run)
    count = actor_count(cfg, len(runs), use_gpu)
    target_ref = ray.put(target)  # the model's bytes, once in the object store for every actor
    real_ref = ray.put(real if method.uses_sources else None)  # once, for the methods that start from it
    workers = [SearchActor.options(num_cpus=cfg.cpus_per_task, num_gpus=1 if use_gpu else 0).remote(
        target_ref, method, job.method_config(cfg.method), job.keep.confidence_bar, dataset.image_shape,
        "cuda" if use_gpu else "cpu", max(1, int(cfg.cpus_per_task)), real_ref) for _ in range(count)]
    progress(f"[attack] {cfg.method}: {len(runs)} run(s) for classes {targets} on {count} actor(s) "
             f"against {target.kind} model {target.path}")
    pending = [workers[run.index % count].run.remote(run) for run in runs]
    results: list[RunResult] = []
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            result: RunResult = ray.get(done[0])
            results.append(result)
            reached = int((result.generations >= 0).sum())
            progress(f"[attack] run {len(results)}/{len(runs)} (seed {result.run.seed}): "
                     f"{reached}/{len(result.run.classes)} classes at >= {job.keep.confidence_bar}, "
                     f"{result.total_evaluations} evaluations, {result.seconds:.1f} s")
    except ray.exceptions.RayError as error:
        raise training_failed(error, "attack") from None
    finally:
        for worker in workers:
            ray.kill(worker)
    metadata = {"config": asdict(job), "attack": asdict(cfg), "method": asdict(job.method_config(cfg.method)),
                "classifier": {"kind": target.kind, "path": target.path, "sha256": target.sha256,
                               "num_outputs": target.num_outputs, "reject_class": target.reject_class},
                "runs": [{"index": r.run.index, "seed": r.run.seed, "classes": list(r.run.classes),
                          "generations_to_threshold": r.generations.tolist(),
                          "evaluations_to_threshold": r.evaluations.tolist(), "seconds": r.seconds}
                         for r in sorted(results, key=lambda r: r.run.index)],
                "versions": versions()}
    report = write_counterfeits(results, classifier_fn, target, dataset, method=cfg.method, confidence_bar=job.keep.confidence_bar,
                                store_dir=job.run.store_dir, run_id=job.run.run_id, run_metadata=metadata,
                                wall_seconds=time.perf_counter() - start, far=far)
    write_report(report, run_dir / f"attack-{cfg.method}.json")
    return report
