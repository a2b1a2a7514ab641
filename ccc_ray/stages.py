"""The stages a user runs, as plain functions of a JobConfig: what the CLI and `jobs/` call.

Training stages go through Ray Train; `generate` runs in the calling process (on a GPU when present).
"""

from __future__ import annotations

import json
from dataclasses import asdict

import torch

from ccc_ray.classifiers.weights import load_classifier
from ccc_ray.data.sources import load_dataset
from ccc_ray.errors import CccError
from ccc_ray.generate import GenerateReport, generate_counterfeits, write_report
from ccc_ray.job_config import JobConfig
from ccc_ray.methods.generator_file import load_generator
from ccc_ray.store.files import ensure_writable_dir


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def run_train_classifier(job: JobConfig) -> dict:
    from ccc_ray.orchestration.train_classifier import train_classifier

    info, metrics = train_classifier(job)
    return {"classifier_file": str(job.run.classifier_file), "classifier_sha256": info.sha256,
            "test_accuracy": metrics.get("test_accuracy"), "epochs": metrics.get("epoch")}


def run_train_generator(job: JobConfig) -> dict:
    from ccc_ray.orchestration.train_generator import train_generator

    path, metrics = train_generator(job, job.generate.method)
    return {"generator_file": path, "steps": metrics.get("step"), "final_confidence": metrics.get("confidence")}


def run_generate(job: JobConfig, progress: bool = True) -> GenerateReport:
    dataset = load_dataset(job.data)
    classifier, info = load_classifier(job.run.classifier_file, dataset.image_shape, dataset.num_classes)
    device = default_device()
    method, meta = load_generator(job.run.generator_file(job.generate.method), device)
    if meta["classifier_sha256"] != info.sha256:
        raise CccError(f"the generator was trained against classifier {meta['classifier_sha256'][:12]}, "
                       f"but {str(job.run.classifier_file)!r} is {info.sha256[:12]}; retrain the generator")
    ensure_writable_dir(job.run.store_dir, "run.store_path")
    ensure_writable_dir(job.run.run_dir, "run.output_dir")
    classifier.to(device)
    run_metadata = {"config": asdict(job), "classifier_sha256": info.sha256, "generator_steps": meta.get("steps"),
                    "versions": _versions()}
    report = generate_counterfeits(
        method, classifier, info.sha256, dataset, store_dir=job.run.store_dir, run_id=job.run.run_id,
        per_class=job.generate.per_class, threshold=job.generate.threshold, seed=job.generate.seed,
        batch_size=job.generate.batch_size, run_metadata=run_metadata, device=device, progress=progress)
    write_report(report, job.run.run_dir / f"generate-{method.name}.json")
    return report


def _versions() -> dict:
    import pyarrow
    import ray

    import ccc_ray

    return {"ccc_ray": ccc_ray.__version__, "torch": torch.__version__, "ray": ray.__version__,
            "pyarrow": pyarrow.__version__}


def summary_line(report: GenerateReport) -> str:
    worst = min(report.diversity_ratio_per_class.values()) if report.diversity_ratio_per_class else float("nan")
    return (f"kept {report.kept}/{report.sampled} ({report.kept_share:.1%}) at the threshold; "
            f"nearest-train distance ratio {report.distance_ratio:.2f}; min diversity ratio {worst:.2f}; "
            f"store {report.store_file}")


def dumps(value) -> str:
    return json.dumps(value, indent=2, default=str)
