"""`ccc-ray scorecard MODEL` on Ray: one task per attack family, judged once on the driver.

The driver checks everything first (the model file, the data, the families, the far rule), so bad input
fails before Ray starts. The model's bytes go into Ray's object store once; each task rebuilds the model,
runs its family at the scorecard's budget against the deployed decision and returns the stored images
with what they cost. The driver judges every family's samples against the model by the same three
rules (`ccc_ray.counterfeits.scorecard`) and writes scorecard.json, scorecard.md and scorecard.png to the
run folder.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import ray
import torch

from ccc_ray.counterfeits.far import FarFromData, fit_far_rule
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
)
from ccc_ray.counterfeits.search import AttackTarget, classifier_from_target, load_target
from ccc_ray.data.dataset import ImageDataset
from ccc_ray.data.sources import DataConfig, load_dataset
from ccc_ray.errors import CccError
from ccc_ray.job import JobConfig
from ccc_ray.methods import method_class
from ccc_ray.orchestration.ray_runtime import ensure_ray, resolve_use_gpu, training_failed
from ccc_ray.reporting import render_scorecard_md, scorecard_png
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


@ray.remote
def family_task(method_cls, config, target: AttackTarget, decision: DeployedThreshold, data: DataConfig,
                per_class: int, seed: int, confidence_bar: float, device: str, threads: int) -> FamilyAttack:
    """One family against the model, in its own Ray task (its share of the node: `threads` threads)."""
    import torch

    torch.set_num_threads(threads)
    dataset = load_dataset(data)
    classifier_fn = classifier_from_target(target, device, threads)
    return attack_family(method_cls, config, classifier_fn, decision, dataset, per_class, seed, confidence_bar,
                         device)


def write_family_store(attack: FamilyAttack, classifier_fn, target: AttackTarget, far: FarFromData,
                       dataset: ImageDataset, confidence_bar: float, store_dir: Path | str, run_id: str) -> str | None:
    """A family's counterfeits, the samples confident on their target AND far from the data (whether or not
    the model's OOD score accepted them), to one store file with their lineage; None if it made none.

    This is how every family enters the hardening pool: the next round trains on (and holds out) them like
    the run's own counterfeits. Row ids follow (run id, family, seed, sample index), so a re-run replaces.
    """
    scored = score_as_stored(attack.images, attack.targets, classifier_fn, confidence_bar, "cpu")
    keep = scored.kept & far.is_far(scored.stored) if len(attack.targets) else scored.kept
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

    With `store_dir`, each family's counterfeits (confident and far) are also written there, one store file
    per family (`Scorecard.stores`), for hardening to pool."""
    cfg = job.scorecard
    dataset = load_dataset(job.data)
    target, classifier_fn = load_model_under_test(cfg.model or job.run.classifier_file, dataset)
    families = scorecard_families(cfg.families, target)
    decision = deployed_threshold(target, classifier_fn, dataset, cfg.ood_score)
    far = fit_far_rule(job.far, dataset, job.run.classifier_file, classifier_fn)
    run_dir = ensure_writable_dir(job.run.run_dir, "run.output_dir")
    configs = {name: family_config(job.method_config(name), cfg) for name in families}

    ensure_ray()
    start = time.perf_counter()
    use_gpu = resolve_use_gpu(job.run)
    threads = max(1, int(cfg.cpus_per_task))
    target_ref = ray.put(target)  # the model's bytes, once in the object store for every task
    progress(f"[scorecard] {len(families)} families ({', '.join(families)}) against {target.kind} model "
             f"{target.path}: OOD score {decision.score} >= {decision.ood_threshold:.6g} ({decision.source}), "
             f"far = nearest training image >= {far.radius:.4g} ({far.space})")
    pending = {family_task.options(num_cpus=cfg.cpus_per_task, num_gpus=1 if use_gpu else 0).remote(
        method_class(name), configs[name], target_ref, decision, job.data, cfg.per_class, cfg.seed,
        job.keep.confidence_bar, "cuda" if use_gpu else "cpu", threads): name for name in families}
    rows, stores = {}, {}
    try:
        waiting = list(pending)
        while waiting:
            done, waiting = ray.wait(waiting, num_returns=1)
            attack: FamilyAttack = ray.get(done[0])
            rows[attack.family] = judge_family(attack, classifier_fn, decision, far, job.keep.confidence_bar)
            if store_dir is not None:
                stored_file = write_family_store(attack, classifier_fn, target, far, dataset, job.keep.confidence_bar,
                                                 store_dir, f"{job.run.run_id}-scorecard")
                if stored_file is not None:
                    stores[attack.family] = stored_file
            row = rows[attack.family]
            progress(f"[scorecard] {row.family}: {row.successes}/{row.samples} successes, near share "
                     f"{row.near_share:.1%}, {row.evaluations:,} evaluations, {row.seconds:.1f} s")
    except ray.exceptions.RayError as error:
        raise training_failed(error, "scorecard") from None
    card = Scorecard(target.path, target.kind, target.sha256, job.keep.confidence_bar, decision, far.describe(),
                     dataclasses.asdict(cfg), [rows[name] for name in families], time.perf_counter() - start,
                     {name: stores[name] for name in families if name in stores})
    write_scorecard(card, run_dir)
    return card


def write_scorecard(card: Scorecard, run_dir: Path) -> None:
    """scorecard.json, scorecard.md and scorecard.png in the run folder, each written whole or not at all."""
    content = card.to_dict()
    atomic_write_bytes(run_dir / "scorecard.json", json.dumps(content, indent=2, default=float).encode())
    atomic_write_bytes(run_dir / "scorecard.md", render_scorecard_md(content).encode())
    scorecard_png(content, run_dir / "scorecard.png")
