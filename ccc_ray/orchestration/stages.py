"""The stage drivers: every stage the CLI and `jobs/*.py` run, as plain functions of a JobConfig, and the
pipeline that sequences them. The top of the package: it imports downward only, and nothing imports it
but the entry points.
"""

from __future__ import annotations

import json
from pathlib import Path

from ccc_ray.classifiers.weights import load_classifier
from ccc_ray.counterfeits.generate import GenerateReport
from ccc_ray.counterfeits.search import summary_line as attack_summary_line
from ccc_ray.data.sources import load_dataset
from ccc_ray.errors import CccError
from ccc_ray.job import JobConfig
from ccc_ray.orchestration.generation import generate_from_file, generate_from_sources
from ccc_ray.orchestration.harden_rounds import run_hardening
from ccc_ray.orchestration.import_classifier import import_classifier
from ccc_ray.orchestration.scorecard import run_scorecard_on_ray
from ccc_ray.orchestration.search_actors import run_attack
from ccc_ray.orchestration.train_classifier import train_classifier
from ccc_ray.orchestration.train_method import train_method
from ccc_ray.orchestration.tune_losses import run_tune
from ccc_ray.reporting import scorecard_table
from ccc_ray.robustness.pgd import PgdSettings, pgd_outcomes, robustness_table
from ccc_ray.store.files import atomic_write_bytes, ensure_writable_dir


def print_flush(line: str) -> None:
    print(line, flush=True)


def train_classifier_stage(job: JobConfig, progress=print_flush) -> dict:
    info, metrics = train_classifier(job)
    summary = {"classifier_file": str(job.run.classifier_file), "classifier_sha256": info.sha256,
               "test_accuracy": metrics.get("test_accuracy"), "epochs": metrics.get("epoch")}
    progress(dumps(summary))
    return summary


def import_classifier_stage(job: JobConfig, progress=print_flush) -> dict:
    _, summary = import_classifier(job)
    progress(dumps(summary))
    return summary


def train_generator_stage(job: JobConfig, progress=print_flush) -> dict:
    path, metrics = train_method(job, job.generate.method)
    summary = {"method": job.generate.method, "generator_file": path, "steps": metrics.get("step"),
               "final_confidence": metrics.get("confidence"),
               **{k: v for k, v in metrics.items() if k.startswith("trained_classifier")}}
    progress(dumps(summary))
    return summary


def generate_stage(job: JobConfig, progress=print_flush) -> GenerateReport:
    report = generate_from_sources(job) if job.generate.sources else generate_from_file(job)
    progress(generate_summary_line(report))
    return report


def attack_stage(job: JobConfig, progress=print_flush):
    report = run_attack(job, progress=progress)
    progress(attack_summary_line(report))
    return report


def harden_stage(job: JobConfig, progress=print_flush) -> dict:
    report = run_hardening(job, progress=progress)
    progress(f"report: {job.run.run_dir / 'report.md'}; ONNX model: {report['export']['onnx']}")
    return report


def tune_stage(job: JobConfig, progress=print_flush) -> dict:
    summary = run_tune(job, progress=progress)
    progress(f"{summary['trials']} trials ({summary['completed']} completed, {summary['stopped_early']} stopped "
             f"early, {summary['errors']} failed); best objective {summary['best']['objective']:.4f}; "
             f"best config {summary['best_config']}")
    return summary


def scorecard_stage(job: JobConfig, progress=print_flush) -> dict:
    card = run_scorecard_on_ray(job, progress=progress).to_dict()
    progress(scorecard_table(card))
    progress(f"scorecard: {job.run.run_dir / 'scorecard.md'} (and scorecard.json, scorecard.png)")
    return card


def pipeline_stage(job: JobConfig, progress=print_flush) -> dict:
    """train-classifier -> train-generator -> generate -> harden (evaluate, re-attack, export)."""
    progress("== train-classifier")
    train_classifier_stage(job, progress)
    progress("== train-generator")
    train_generator_stage(job, progress)
    progress("== generate")
    generate_stage(job, progress)
    progress("== harden, evaluate, export")
    return harden_stage(job, progress)


def robustness_stage(job: JobConfig, progress=print_flush) -> list[dict]:
    """Accuracy under L-infinity PGD at each epsilon for a classifier file (pure torch, this process)."""
    cfg = job.robustness
    path = Path(cfg.model) if cfg.model else job.run.classifier_file
    if path.suffix == ".onnx":
        raise CccError(f"robustness.model: {str(path)!r} is an ONNX model; PGD needs gradients: give its "
                       ".safetensors classifier file")
    dataset = load_dataset(job.data)
    model, info = load_classifier(path, dataset.image_shape, dataset.num_classes)
    count = min(cfg.samples, len(dataset.test_images))
    images, labels = dataset.test_images[:count], dataset.test_labels[:count]
    outcomes = info.reject_class and cfg.attack != "class_head"
    if not cfg.epsilons:
        raise CccError("robustness.epsilons: give at least one epsilon (e.g. 0,0.05,0.1)")
    if outcomes:  # accuracy = correct over all outputs; a reject verdict is neither correct nor a wrong class
        settings = PgdSettings(steps=cfg.steps, step_size=cfg.step_size, seed=cfg.seed)
        rows = []
        for epsilon in cfg.epsilons:
            shares = pgd_outcomes(model, images, labels, float(epsilon), info.num_classes, cfg.attack, settings)
            rows.append({"epsilon": float(epsilon), "accuracy": shares["correct"], "steps": cfg.steps,
                         "step_size": cfg.step_size if cfg.step_size is not None else 2.5 * epsilon / cfg.steps,
                         "attack": cfg.attack, "rejected": shares["rejected"], "wrong": shares["wrong"],
                         "class_head": shares["class_head"]})
    else:
        rows = robustness_table(model.eval(), images, labels, list(cfg.epsilons), cfg.steps, cfg.step_size,
                                cfg.seed, class_outputs=info.num_classes if info.reject_class else None)
    progress(f"accuracy under L-inf PGD ({cfg.steps} steps, {count} test images) of {path}"
             + ((" (class head of a K + 1 model)" if not outcomes else f" (attack {cfg.attack}, K + 1 outputs)")
                if info.reject_class else ""))
    for row in rows:
        progress(f"  epsilon {row['epsilon']:.3f}: accuracy {row['accuracy']:.4f}"
                 + (f", rejected {row['rejected']:.4f}, wrong class {row['wrong']:.4f}" if outcomes else ""))
    ensure_writable_dir(job.run.run_dir, "run.output_dir")
    atomic_write_bytes(job.run.run_dir / f"robustness-{path.stem}.json", dumps(rows).encode())
    return rows


STAGES = {
    "train-classifier": train_classifier_stage,
    "import-classifier": import_classifier_stage,
    "train-generator": train_generator_stage,
    "generate": generate_stage,
    "attack": attack_stage,
    "harden": harden_stage,
    "tune": tune_stage,
    "scorecard": scorecard_stage,
    "robustness": robustness_stage,
    "pipeline": pipeline_stage,
}


def generate_summary_line(report: GenerateReport) -> str:
    worst = min(report.diversity_ratio_per_class.values()) if report.diversity_ratio_per_class else float("nan")
    return (f"kept {report.kept}/{report.sampled} ({report.kept_share:.1%}) at the confidence bar; "
            f"nearest-train distance ratio {report.distance_ratio:.2f}; min diversity ratio {worst:.2f}; "
            f"store {report.store_file}")


def dumps(value) -> str:
    return json.dumps(value, indent=2, default=str)
