"""`ccc-ray scorecard MODEL` on Ray: one task per attack family, judged once on the driver.

The driver checks everything first (the model file, the data, the families, the far rule), so bad input
fails before Ray starts. The model's bytes go into Ray's object store once; each task rebuilds the model,
runs its family at the scorecard's budget against the deployed decision and returns the stored images
with what they cost. The driver judges every family's samples against the model by the same three
rules (`ccc_ray.counterfeits.scorecard`; the judges are fitted once, on the driver) and writes
scorecard.json, scorecard.md, scorecard.png and scorecard-judged.png to the run folder.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import ray
import torch

from ccc_ray.counterfeits.far import FarFromData, fit_far_rule
from ccc_ray.counterfeits.judge import CONFIRMED, Judge, fit_judges, judged_success
from ccc_ray.counterfeits.keep import score_as_stored
from ccc_ray.counterfeits.quality import dequantize, nearest_distances
from ccc_ray.counterfeits.scorecard import (
    DeployedThreshold,
    FamilyAttack,
    Scorecard,
    attack_family,
    deployed_threshold,
    family_config,
    judge_family,
    scorecard_families,
    summary_line,
)
from ccc_ray.counterfeits.search import AttackTarget, classifier_from_target, load_target
from ccc_ray.data.dataset import ImageDataset
from ccc_ray.data.sources import DataConfig, load_dataset
from ccc_ray.errors import CccError
from ccc_ray.job import JobConfig
from ccc_ray.methods import method_class
from ccc_ray.orchestration.ray_runtime import ensure_ray, resolve_use_gpu, training_failed
from ccc_ray.reporting import judged_grid_png, render_scorecard_md, scorecard_png
from ccc_ray.store.files import atomic_write_bytes, ensure_writable_dir
from ccc_ray.store.writer import CounterfeitWriter, counterfeit_batch


def load_model_under_test(path: str | Path, dataset: ImageDataset):
    """(AttackTarget, classifier callable) for a torch file (white box) or an ONNX file (black box)."""
    file = Path(path)
    if not file.is_file():
        raise CccError(f"scorecard.model: {str(file)!r} does not exist")
    if file.suffix.lower() == ".onnx":
        return load_target(None, str(file), dataset, None, "scorecard.model")
    try:
        return load_target(file, None, dataset, None, "scorecard.model")
    except CccError as error:
        raise CccError(f"scorecard.model: {str(file)!r} is neither a ccc-ray torch classifier (.safetensors) nor "
                       f"an ONNX model (.onnx): {error}") from None


GRID_SAMPLES = 10  # fooling samples per family shown in scorecard-judged.png


@ray.remote
def family_task(method_cls, config, target: AttackTarget, decision: DeployedThreshold, data: DataConfig,
                per_class: int, seed: int, confidence_bar: float, device: str, threads: int,
                budget_scale: float) -> FamilyAttack:
    """One family at one budget against the model, in its own Ray task (its share of the node: `threads`)."""
    import torch

    torch.set_num_threads(threads)
    dataset = load_dataset(data)
    classifier_fn = classifier_from_target(target, device, threads)
    return attack_family(method_cls, config, classifier_fn, decision, dataset, per_class, seed, confidence_bar,
                         device, budget_scale)


def write_family_store(attack: FamilyAttack, classifier_fn, target: AttackTarget, far: FarFromData,
                       dataset: ImageDataset, confidence_bar: float, store_dir: Path | str, run_id: str,
                       judges: list[Judge]) -> str | None:
    """A family's counterfeits, the samples confident on their target AND not of it (far from the data, or
    near and named another class by any judge; whether or not the model's OOD score accepted them), to one
    store file with their lineage; None if it made none.

    This is how every family enters the hardening pool: the next round trains on (and holds out) them like
    the run's own counterfeits. Row ids follow (run id, family, seed, sample index), so a re-run replaces.
    """
    scored = score_as_stored(attack.images, attack.targets, classifier_fn, confidence_bar, "cpu")
    keep = scored.kept
    if len(attack.targets):
        is_far = far.is_far(scored.stored)
        keep = scored.kept & (is_far | torch.stack(
            [judged_success(scored.kept, is_far, judge, scored.stored, attack.targets)[1] for judge in judges]).any(0))
    if not bool(keep.any()):
        return None
    stored = scored.stored[keep]
    near = nearest_distances(dequantize(stored), dataset.train_images)
    metadata = {"stage": "scorecard", "family": attack.family, "budget": attack.budget, "model": target.path}
    with CounterfeitWriter(store_dir, attack.family, run_id, metadata, list(dataset.class_names)) as writer:
        writer.write(counterfeit_batch(
            stored.permute(0, 2, 3, 1).contiguous().numpy(), attack.targets[keep].numpy(),
            scored.predicted[keep].numpy(), scored.confidence[keep].numpy(), near.numpy(),
            torch.nonzero(keep).squeeze(1).numpy(), run_id=run_id, method=attack.family,
            classifier_sha256=target.sha256, seed=int(attack.budget.get("seed", 0))))
    return str(writer.path)


def run_scorecard_on_ray(job: JobConfig, progress=print, store_dir: Path | str | None = None) -> Scorecard:
    """Every applicable family as a Ray task against `scorecard.model` (default: the run's classifier).

    With `store_dir`, each family's counterfeits (confident and not of their target) are also written there,
    one store file per family and budget (`Scorecard.stores`), for hardening to pool."""
    cfg = job.scorecard
    dataset = load_dataset(job.data)
    target, classifier_fn = load_model_under_test(cfg.model or job.run.classifier_file, dataset)
    families = scorecard_families(cfg.families, target)
    decision = deployed_threshold(target, classifier_fn, dataset, cfg.ood_score)
    far = fit_far_rule(job.far, dataset, job.run.classifier_file, classifier_fn)
    judges = fit_judges(job.judge, dataset)
    run_dir = ensure_writable_dir(job.run.run_dir, "run.output_dir")
    runs = [(name, scale) for name in families for scale in dict.fromkeys(cfg.budget_scales)]
    configs = {run: family_config(job.method_config(run[0]), cfg, method_class(run[0]), run[1]) for run in runs}

    ensure_ray()
    start = time.perf_counter()
    use_gpu = resolve_use_gpu(job.run)
    threads = max(1, int(cfg.cpus_per_task))
    target_ref = ray.put(target)  # the model's bytes, once in the object store for every task
    progress(f"[scorecard] {len(families)} families ({', '.join(families)}) at budget x"
             f"{', x'.join(f'{scale:g}' for scale in dict.fromkeys(cfg.budget_scales))} against {target.kind} model "
             f"{target.path}: OOD score {decision.score} >= {decision.ood_threshold:.6g} ({decision.source}), "
             f"far = nearest training image >= {far.radius:.4g} ({far.space}); judges "
             + ", ".join(f"{judge.name} ({judge.accuracy:.1%} on held-out real images)" for judge in judges))
    pending = [family_task.options(num_cpus=cfg.cpus_per_task, num_gpus=1 if use_gpu else 0).remote(
        method_class(name), configs[(name, scale)], target_ref, decision, job.data, cfg.per_class, cfg.seed,
        job.keep.confidence_bar, "cuda" if use_gpu else "cpu", threads, scale) for name, scale in runs]
    rows, stores, judged = {}, {}, {}
    try:
        waiting = list(pending)
        while waiting:
            done, waiting = ray.wait(waiting, num_returns=1)
            attack: FamilyAttack = ray.get(done[0])
            run = (attack.family, attack.budget_scale)
            rows[run] = judge_family(attack, classifier_fn, decision, far, job.keep.confidence_bar, judges)
            judged[family_key(*run)] = judged_samples(attack, rows[run].verdicts)
            if store_dir is not None:
                suffix = "" if attack.budget_scale == 1 else f"-x{attack.budget_scale:g}"
                stored_file = write_family_store(attack, classifier_fn, target, far, dataset, job.keep.confidence_bar,
                                                 store_dir, f"{job.run.run_id}-scorecard{suffix}", judges)
                if stored_file is not None:
                    stores[family_key(*run)] = stored_file
            progress(f"[scorecard] {summary_line(rows[run])}")
    except ray.exceptions.RayError as error:
        raise training_failed(error, "scorecard") from None
    card = Scorecard(target.path, target.kind, target.sha256, job.keep.confidence_bar, decision, far.describe(),
                     [judge.describe() for judge in judges], dataclasses.asdict(cfg), [rows[run] for run in runs],
                     time.perf_counter() - start,
                     {family_key(*run): stores[family_key(*run)] for run in runs if family_key(*run) in stores})
    write_scorecard(card, run_dir)
    judged_grid_png({key: judged[key] for key in (family_key(*run) for run in runs)}, list(dataset.class_names),
                    run_dir / "scorecard-judged.png")
    return card


def judged_samples(attack: FamilyAttack, verdicts: list[str], per_row: int = GRID_SAMPLES):
    """Up to `per_row` samples that fooled the deployed model, with target and verdict: the report's grid,
    failures (far, wrong) first."""
    picked = sorted((index for index, verdict in enumerate(verdicts) if verdict),
                    key=lambda index: verdicts[index] == CONFIRMED)[:per_row]
    return attack.images[picked], attack.targets[picked], [verdicts[index] for index in picked]


def family_key(family: str, budget_scale: float) -> str:
    """A row's name in the card's maps: the family, with its budget where it is not 1x (cppn@x10)."""
    return family if budget_scale == 1 else f"{family}@x{budget_scale:g}"


def write_scorecard(card: Scorecard, run_dir: Path) -> None:
    """scorecard.json, scorecard.md and scorecard.png in the run folder, each written whole or not at all."""
    content = card.to_dict()
    atomic_write_bytes(run_dir / "scorecard.json", json.dumps(content, indent=2, default=float).encode())
    atomic_write_bytes(run_dir / "scorecard.md", render_scorecard_md(content).encode())
    scorecard_png(content, run_dir / "scorecard.png")
