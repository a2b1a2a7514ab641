"""`generate`: sample counterfeits from a trained method's generator file into the Parquet store.

Runs in the calling process (on a GPU when present); the math is `ccc_ray.counterfeits.generate`.
"""

from __future__ import annotations

from dataclasses import asdict

from ccc_ray.classifiers.inference import default_device
from ccc_ray.classifiers.weights import load_classifier
from ccc_ray.counterfeits.far import fit_far_rule
from ccc_ray.counterfeits.generate import GenerateReport, generate_counterfeits, write_report
from ccc_ray.data.sources import load_dataset
from ccc_ray.errors import CccError
from ccc_ray.job import JobConfig
from ccc_ray.methods.generator_file import load_generator
from ccc_ray.orchestration.ray_runtime import versions
from ccc_ray.store.files import ensure_writable_dir


def generate_from_file(job: JobConfig, progress: bool = True) -> GenerateReport:
    """Sample `generate.per_class` per class from the run's generator file, keep by the keep rule, store."""
    dataset = load_dataset(job.data)
    classifier, info = load_classifier(job.run.classifier_file, dataset.image_shape, dataset.num_classes)
    device = default_device()
    classifier.to(device).eval().requires_grad_(False)
    method, meta = load_generator(job.run.generator_file(job.generate.method), device, classifier)
    if meta["classifier_sha256"] != info.sha256:
        raise CccError(f"the generator was trained against classifier {meta['classifier_sha256'][:12]}, "
                       f"but {str(job.run.classifier_file)!r} is {info.sha256[:12]}; retrain the generator")
    ensure_writable_dir(job.run.store_dir, "run.counterfeit_store")
    ensure_writable_dir(job.run.run_dir, "run.output_dir")
    run_metadata = {"config": asdict(job), "classifier_sha256": info.sha256, "generator_steps": meta.get("steps"),
                    "versions": versions()}
    report = generate_counterfeits(
        method, classifier, info.sha256, dataset, store_dir=job.run.store_dir, run_id=job.run.run_id,
        per_class=job.generate.per_class, confidence_bar=job.keep.confidence_bar, seed=job.generate.seed,
        batch_size=job.generate.batch_size, run_metadata=run_metadata, device=device, progress=progress,
        far=fit_far_rule(job.far, dataset, job.run.classifier_file) if job.far.gate_store else None)
    write_report(report, job.run.run_dir / f"generate-{method.name}.json")
    return report
