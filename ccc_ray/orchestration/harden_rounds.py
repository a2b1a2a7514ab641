"""The hardening loop: harden -> evaluate -> re-attack, for `harden.rounds` rounds, then export to ONNX.

Round r fine-tunes the baseline classifier on the counterfeits of every attack so far (pooled; the
first attack is the run's own store), evaluates it, and attacks it afresh with a new generator; that
re-attack's counterfeits join the pool of round r + 1. Each round lives in its own folder
`<run>/rounds/<run_id>.r<r>/`, a run of its own with classifier, generator, store and Ray checkpoints,
so an interrupted loop resumes where it stopped when started again with the same settings.

The driver never holds the pool: it scans it (checks, counts, ids); the training rows reach the Train
workers as Ray Data shards (`harden_classifier.py`), the held-out rows and the real OOD sets reach
evaluation's scoring actors (`evaluation.py`) and the re-attack samples on `generate`'s pipeline
(`reattack.py`), each in this process instead below its line of 20,000 images.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_curve

from ccc_ray.classifiers.inference import default_device
from ccc_ray.classifiers.weights import load_classifier
from ccc_ray.counterfeits.far import fit_far_rule
from ccc_ray.counterfeits.judge import fit_judges
from ccc_ray.data.real_ood import REAL_OOD_SETS
from ccc_ray.data.sources import load_dataset
from ccc_ray.errors import CccError
from ccc_ray.evaluate import Evaluation
from ccc_ray.export.onnx_export import check_parity, export_onnx
from ccc_ray.hardening.pool import PoolScan, held_out_rows, scan_pool, write_split_ids
from ccc_ray.job import JobConfig
from ccc_ray.orchestration.evaluation import HELD_OUT, evaluate_on_pool
from ccc_ray.orchestration.generation import generate_from_file
from ccc_ray.orchestration.harden_classifier import harden_classifier, with_concrete_mode
from ccc_ray.orchestration.reattack import reattack_success
from ccc_ray.orchestration.scorecard import family_key, run_scorecard_on_ray
from ccc_ray.orchestration.train_method import train_method
from ccc_ray.reporting import counterfeit_grid_png, roc_curves_png, write_report_md
from ccc_ray.store.files import atomic_write_bytes, ensure_writable_dir
from ccc_ray.store.reader import first_rows_per_class

GRID_PER_CLASS = 8  # counterfeits per class in counterfeits.png
PARITY_ROWS = 4096  # held-out counterfeits the ONNX export's parity check compares (the first of the pool)


def round_job(job: JobConfig, round_index: int, classifier_path: Path) -> JobConfig:
    """The run of one round: its own run id and folder, attacking `classifier_path`."""
    method = job.generate.method
    steps = job.harden.reattack_steps or job.method_config(method).steps
    run = dataclasses.replace(job.run, run_id=f"{job.run.run_id}.r{round_index}",
                              output_dir=str(job.run.run_dir / "rounds"), classifier_path=str(classifier_path),
                              generator_path=None, counterfeit_store=None,
                              storage_path=job.run.storage_path)  # shared storage on multi-node clusters
    return dataclasses.replace(job, run=run).with_method_config(
        method, dataclasses.replace(job.method_config(method), steps=steps))


def round_scorecard(job: JobConfig, round_index: int, model_path: Path, progress) -> tuple[dict | None, list[str]]:
    """With `scorecard.each_round`: every attack family against this round's model (round 0: the baseline),
    written to the round's folder; per family the figures report.json keeps, and (`scorecard.pool`) the
    store files of each family's confident samples not of their target for the next round's pool. The far
    rule keeps the run's baseline classifier as its reference."""
    if not job.scorecard.each_round:
        return None, []
    this = round_job(job, round_index, model_path)
    this = dataclasses.replace(this, run=dataclasses.replace(this.run, classifier_path=str(job.run.classifier_file)),
                               scorecard=dataclasses.replace(job.scorecard, model=str(model_path)))
    ensure_writable_dir(this.run.run_dir, "run.output_dir")
    card = run_scorecard_on_ray(this, progress, this.run.store_dir if job.scorecard.pool else None).to_dict()
    kept = ("samples", "successes", "success_rate", "confirmed_share", "far_successes", "judges",
            "evaluations_per_success", "evaluations_to_first_success", "seconds_per_success")
    return ({family_key(row["family"], row["budget_scale"]): {name: row[name] for name in kept}
             for row in card["families"]},
            list(card["stores"].values()))


def roc_points(evaluation: Evaluation, set_name: str) -> tuple[np.ndarray, np.ndarray, float]:
    score = evaluation.primary_score
    scores_in, scores_out = evaluation.scores_in[score], evaluation.scores_out[set_name][score]
    labels = np.concatenate([np.ones(len(scores_in)), np.zeros(len(scores_out))])
    fpr, tpr, _ = roc_curve(labels, np.concatenate([scores_in, scores_out]))
    return fpr, tpr, evaluation.metrics[set_name][score]["auroc"]


def run_hardening(job: JobConfig, progress=print) -> dict:
    """Every round, then export; returns report.json's content (also written to the run folder)."""
    dataset = load_dataset(job.data)
    job = with_concrete_mode(job, dataset.image_shape)
    cfg = job.harden
    baseline_path = job.run.classifier_file
    baseline, info = load_classifier(baseline_path, dataset.image_shape, dataset.num_classes)
    stores = [store if "://" in store else str(Path(store).absolute()) for store in cfg.stores] \
        or [str(job.run.store_dir)]

    def pool_scan(pool: list[str]) -> PoolScan:
        return scan_pool(pool, dataset.image_shape, dataset.num_classes, cfg.eval_fraction, cfg.split_seed)

    # The driver only scans the pool (checks, counts, ids): the training rows stream to the Train workers, the
    # held-out rows to the evaluation's scoring actors (`evaluate_on_pool`).
    first_scan = pool_scan(stores)  # bad stores fail here, before anything is written
    baseline_generator = job.run.generator_file(job.generate.method)
    if not baseline_generator.is_file():
        raise CccError(f"run.generator_path: {str(baseline_generator)!r} does not exist; the baseline attack's "
                       "generator is needed for the re-attack figures (run `ccc-ray train-generator`)")
    run_dir = ensure_writable_dir(job.run.run_dir, "run.output_dir")
    device = default_device()
    far = fit_far_rule(job.far, dataset, baseline_path)  # a re-attack success is judged as on the scorecard:
    judges = fit_judges(job.judge, dataset)  # far, or near and named another class by a judge

    def evaluate(model, model_path: Path, reject: bool, scan: PoolScan) -> Evaluation:
        return evaluate_on_pool(job, dataset, model, model_path, reject, scan, device)

    def reattack(attacker: JobConfig, model, model_path: Path, reject: bool, evaluation: Evaluation) -> dict:
        return reattack_success(attacker, attacker.run.generator_file(job.generate.method), model_path, model,
                                reject, evaluation.primary_score, evaluation.ood_threshold, far, device, judges)

    # The baseline's scorecard first: its families join the pool, and the baseline is judged on the same
    # held-out rows (per family) as round 1.
    baseline_card, scorecard_stores = round_scorecard(job, 0, baseline_path, progress)
    pool = list(stores) + scorecard_stores
    pool_split = pool_scan(pool) if scorecard_stores else first_scan
    baseline_eval = evaluate(baseline, baseline_path, False, pool_split)
    rows = [{"round": 0, "model": str(baseline_path), "classifier_sha256": info.sha256,
             "counterfeits_train": pool_split.train_rows, "counterfeits_held_out": pool_split.eval_rows,
             **baseline_eval.to_dict(),
             "attack": reattack(job, baseline, baseline_path, False, baseline_eval),
             "scorecard": baseline_card}]
    progress(f"[harden] baseline: clean accuracy {baseline_eval.clean_accuracy:.4f}, "
             f"held-out counterfeit AUROC {rows[0]['ood'][HELD_OUT][baseline_eval.primary_score]['auroc']:.4f}")
    evaluations = [baseline_eval]
    hardened_path = baseline_path
    previous_pool: list[str] | None = None
    stopped_after = None
    for round_index in range(1, cfg.rounds + 1):
        if previous_pool is not None and sorted(pool) == sorted(previous_pool):
            # Every round fine-tunes the baseline on the pool with the same seed: an unchanged pool gives the
            # same model and the same attacks again. Say so and stop, rather than repeat the work.
            stopped_after = round_index - 1
            progress(f"[harden] round {round_index}/{cfg.rounds}: no attack of round {stopped_after} found a far "
                     f"counterfeit, so the pool is unchanged and the round would repeat round {stopped_after}; "
                     "stopping here")
            break
        previous_pool = list(pool)
        this = round_job(job, round_index, baseline_path)
        round_dir = ensure_writable_dir(this.run.run_dir, "run.output_dir")
        hardened_path = round_dir / "classifier-hardened.safetensors"
        split = pool_scan(pool)
        write_split_ids(round_dir / "counterfeit-split.json", pool, dataset.image_shape, dataset.num_classes,
                        cfg.eval_fraction, cfg.split_seed)
        progress(f"[harden] round {round_index}/{cfg.rounds}: fine-tuning ({cfg.mode}) on "
                 f"{split.train_rows} counterfeits from {len(pool)} store(s)")
        hardened_info, metrics = harden_classifier(job, baseline_path, pool, hardened_path,
                                                   f"{this.run.run_id}-harden")
        hardened, _ = load_classifier(hardened_path, dataset.image_shape, dataset.num_classes)
        reject = hardened_info.reject_class
        if hardened_info.guard and hardened_info.guard["cap"] >= job.keep.confidence_bar:
            progress(f"[harden] note: the data guard caps far images at {hardened_info.guard['cap']:.4g}, at or "
                     f"above keep.confidence_bar {job.keep.confidence_bar}: far images can still reach the bar "
                     "(lower harden.guard_cap below the bar for the guarantee)")
        evaluation = evaluate(hardened, hardened_path, reject, split)
        progress(f"[harden] round {round_index}: re-attacking the hardened classifier")
        attacker = dataclasses.replace(this, run=dataclasses.replace(this.run, classifier_path=str(hardened_path)))
        train_method(attacker)
        attack = reattack(attacker, hardened, hardened_path, reject, evaluation)
        try:
            generated = generate_from_file(attacker, progress=False)
            pool.append(str(Path(generated.store_file)))
            kept = generated.kept
        except CccError as error:  # a hardened model may leave the re-attack with no confident sample
            if "none of" not in str(error):
                raise
            kept = 0
        rows.append({"round": round_index, "model": str(hardened_path), "classifier_sha256": hardened_info.sha256,
                     "guard": hardened_info.guard,
                     "counterfeits_train": split.train_rows, "counterfeits_held_out": split.eval_rows,
                     "final_train_loss": metrics.get("train_loss"), **evaluation.to_dict(),
                     "attack": {**attack, "kept_for_next_round": kept}})
        rows[-1]["scorecard"], scorecard_stores = round_scorecard(job, round_index, hardened_path, progress)
        pool += scorecard_stores
        evaluations.append(evaluation)
        progress(f"[harden] round {round_index}: clean accuracy {evaluation.clean_accuracy:.4f}, held-out AUROC "
                 f"{rows[-1]['ood'][HELD_OUT][evaluation.primary_score]['auroc']:.4f}, re-attack success "
                 f"{attack['success_rate']:.1%}")
    report = {"run_id": job.run.run_id, "data": job.data.name, "mode": cfg.mode, "score": cfg.score,
              "confidence_bar": job.keep.confidence_bar,
              "baseline": str(baseline_path), "hardened": str(hardened_path), "rounds": rows,
              "rounds_asked": cfg.rounds, "stopped_after_round": stopped_after,
              "real_ood_sets": sorted(REAL_OOD_SETS)}
    report["export"] = export_hardened(job, hardened_path, evaluations[-1], dataset, first_scan)
    write_artifacts(job, report, evaluations, dataset, run_dir)
    return report


def export_hardened(job: JobConfig, hardened_path: Path, evaluation: Evaluation, dataset, scan: PoolScan) -> dict:
    """ONNX export of the last round's classifier with its score and threshold, checked against torch on the
    test set and on (at most `PARITY_ROWS` of) the held-out counterfeits of the run's own stores."""
    model, info = load_classifier(hardened_path, dataset.image_shape, dataset.num_classes)
    path = job.run.run_dir / "classifier-hardened.onnx"
    export_onnx(model, path, list(info.class_names), info.image_shape, evaluation.primary_score,
                evaluation.ood_threshold, info.reject_class)
    parity = {"real": check_parity(model, path, dataset.test_images),
              "counterfeit": check_parity(model, path, held_out_rows(scan, job.harden.eval_fraction,
                                                                     job.harden.split_seed, PARITY_ROWS)[0])}
    return {"onnx": str(path), "score": evaluation.primary_score, "threshold": evaluation.ood_threshold,
            "parity_max_abs_probability_difference": parity}


def write_artifacts(job: JobConfig, report: dict, evaluations: list[Evaluation], dataset, run_dir: Path) -> None:
    atomic_write_bytes(run_dir / "report.json", json.dumps(report, indent=2, default=float).encode())
    write_report_md(report, run_dir / "report.md")
    images, targets = first_rows_per_class(job.run.store_dir, dataset.image_shape, dataset.num_classes,
                                           GRID_PER_CLASS)
    counterfeit_grid_png(images, targets, list(dataset.class_names), run_dir / "counterfeits.png", GRID_PER_CLASS)
    for label, evaluation in (("before", evaluations[0]), ("after", evaluations[-1])):
        curves = {name: roc_points(evaluation, name) for name in evaluation.metrics}
        roc_curves_png(curves, run_dir / f"roc-{label}.png",
                       f"{label} hardening ({evaluation.primary_score})")
