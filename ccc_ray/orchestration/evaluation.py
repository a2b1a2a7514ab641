"""Hardening's evaluation: the held-out counterfeits and the real OOD sets scored on Ray Data.

Large sets never pass through the driver. Ray Data read tasks read the held-out rows of the pool from the
Parquet stores, one row group at a time (split by row id exactly as `held_out_split` splits them, the
rows of `ccc_ray/orchestration/harden_classifier.py`'s training dataset left out), and render the real OOD
sets from their plans (`ccc_ray/data/real_ood.py`: a few numbers per image); `map_batches` on an actor
pool scores them (each actor loads the classifier file once; one GPU per actor when `run.use_gpu` resolves
true, `harden.eval_cpus_per_actor` CPUs otherwise), and only the per-row OOD scores come back: the driver
holds a few floats per row and computes AUROC, AUPR and FPR95 from them (`evaluation_from_scores`).

Below `EVAL_IN_PROCESS_LIMIT` rows to score (held-out counterfeits plus real OOD images; the default
pipeline has about 1,400) starting an actor pool costs more than scoring them here, so they are scored in
this process unless `--harden.eval_actors N` asks for N actors. Both engines give the same figures: the
same rows, the same score functions (`score_images`); only the batches differ, which moves a score by
float rounding at most. The in-distribution test set is scored here either way: `load_dataset` holds it
in the driver already.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import ray.data
import torch

from ccc_ray.classifiers.training import predict_logits
from ccc_ray.classifiers.weights import classifier_from_bytes
from ccc_ray.data.real_ood import REAL_OOD_SETS, real_ood_images, real_ood_plans, render_real_ood
from ccc_ray.evaluate import Evaluation, evaluation_from_scores, row_scores, score_images
from ccc_ray.hardening.pool import PoolScan, held_out_rows, split_rows
from ccc_ray.job import JobConfig
from ccc_ray.orchestration.ray_runtime import actor_pool_size, ensure_ray, resolve_use_gpu

HELD_OUT = "counterfeits_held_out"  # the pooled held-out set; each family's is `counterfeits_held_out:<method>`
EVAL_IN_PROCESS_LIMIT = 20_000  # rows to score (held-out + real OOD): below this, scored in the driver by default
SCORE_ROWS = 1024  # images per actor call
RENDER_ROWS = 4096  # real OOD images rendered per block
READ_TASKS = 2  # store files read (or OOD blocks rendered) at once


def eval_actor_count(job: JobConfig, rows: int) -> int:
    """0 = score in this process; else the size of the Ray Data actor pool for `rows` rows to score."""
    cfg = job.harden
    if cfg.eval_actors > 0:
        return cfg.eval_actors
    if rows < EVAL_IN_PROCESS_LIMIT:
        return 0
    ensure_ray()
    return actor_pool_size(job.run, cfg.eval_cpus_per_actor)


def held_out_by_family(scores: dict[str, np.ndarray], families: np.ndarray,
                       names: list[str]) -> dict[str, dict[str, np.ndarray]]:
    """The held-out counterfeits of each family (store `method`; `families` indexes `names` per row) as their
    own OOD set, where the held-out rows have more than one family; the pooled set stays `HELD_OUT`."""
    if len(names) < 2:
        return {}
    return {f"{HELD_OUT}:{name}": {score: values[families == code] for score, values in scores.items()}
            for code, name in enumerate(names)}


class ImageScorer:
    """A Ray Data actor: the classifier loaded once, then the OOD scores of each batch of images."""

    def __init__(self, classifier_bytes: bytes, classifier_path: str, use_gpu: bool):
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        model, info = classifier_from_bytes(classifier_bytes, classifier_path)
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.reject_class = info.reject_class

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images = batch["image"] if batch["image"].flags.writeable else batch["image"].copy()  # Ray's may be read-only
        scores = score_images(self.model, torch.from_numpy(images), self.reject_class, self.device)
        return {"set": batch["set"], "family": batch["family"], **scores}


def _read_held_out(batch: dict[str, np.ndarray], image_shape: tuple[int, int, int], eval_fraction: float,
                   seed: int, dropped: dict[str, list[str]], families: list[str]) -> Iterator[dict[str, np.ndarray]]:
    """A Ray Data task: the held-out rows of its store files, one row group at a time, as float32 images in
    [0, 1] (as `table_images` makes them) with the index of their family."""
    code = {name: index for index, name in enumerate(families)}
    for file in batch["file"]:
        for images, part in split_rows(str(file), image_shape, eval_fraction, seed, dropped.get(str(file), ()),
                                       held_out=True):
            yield {"image": torch.from_numpy(images).float().div_(255.0).numpy(),
                   "set": np.zeros(len(images), np.int32),
                   "family": np.array([code[name] for name in part["method"].to_pylist()], np.int32)}


def _render_real_ood(batch: dict[str, np.ndarray], name: str, set_index: int,
                     image_shape: tuple[int, int, int]) -> dict[str, np.ndarray]:
    """A Ray Data task: real OOD images of set `name` rendered from rows of its plan."""
    images = render_real_ood(name, batch["data"], image_shape).numpy()
    return {"image": images, "set": np.full(len(images), set_index, np.int32),
            "family": np.full(len(images), -1, np.int32)}


def read_tasks(inputs: int) -> ray.data.TaskPoolStrategy:
    """At most `READ_TASKS` read (or render) tasks at once, and no more than there are inputs."""
    return ray.data.TaskPoolStrategy(size=max(1, min(READ_TASKS, inputs)))


def score_sets_on_ray(job: JobConfig, model_path: Path, scan: PoolScan, actors: int,
                      use_gpu: bool) -> dict[str, dict[str, np.ndarray]]:
    """OOD set -> score -> float32 per row, for the held-out rows of `scan` (pooled and per family) and the
    real OOD sets, scored by `actors` Ray Data actors holding the classifier at `model_path`."""
    cfg = job.harden
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # rows come back in the order `held_out_split` reads them
    # The reads reserve no CPU, so a pool of actors that fills the cluster cannot starve them.
    files = ray.data.from_items([{"file": file} for file in scan.files], override_num_blocks=len(scan.files))
    parts = [files.map_batches(_read_held_out, batch_size=1, num_cpus=0, compute=read_tasks(len(scan.files)),
                               fn_kwargs={"image_shape": scan.image_shape, "eval_fraction": cfg.eval_fraction,
                                          "seed": cfg.split_seed, "dropped": scan.dropped,
                                          "families": scan.held_out_families})]
    set_names = [HELD_OUT]
    for name, plan in real_ood_plans(cfg.real_ood_per_set, cfg.seed).items():
        blocks = [plan[start:start + RENDER_ROWS] for start in range(0, len(plan), RENDER_ROWS)]
        parts.append(ray.data.from_numpy(blocks).map_batches(
            _render_real_ood, batch_size=None, num_cpus=0, compute=read_tasks(len(blocks)),
            fn_kwargs={"name": name, "set_index": len(set_names), "image_shape": scan.image_shape}))
        set_names.append(name)
    scored = parts[0].union(*parts[1:]).map_batches(
        ImageScorer, batch_size=SCORE_ROWS, concurrency=actors, num_gpus=1 if use_gpu else 0,
        num_cpus=cfg.eval_cpus_per_actor,
        fn_constructor_kwargs={"classifier_bytes": model_path.read_bytes(), "classifier_path": str(model_path),
                               "use_gpu": use_gpu})
    collected: dict[int, dict[str, list[np.ndarray]]] = {index: {} for index in range(len(set_names))}
    families: list[np.ndarray] = []
    for batch in scored.iter_batches(batch_size=None, batch_format="numpy"):
        for index in np.unique(batch["set"]).tolist():
            rows = batch["set"] == index
            for score in batch:
                if score not in ("set", "family"):
                    collected[index].setdefault(score, []).append(batch[score][rows])
            if index == 0:
                families.append(batch["family"][rows])
    scores = {name: {score: np.concatenate(values) for score, values in collected[index].items()}
              for index, name in enumerate(set_names)}
    held_out = scores.pop(HELD_OUT)
    by_family = held_out_by_family(held_out, np.concatenate(families), scan.held_out_families)
    return {HELD_OUT: held_out, **by_family, **scores}


def score_sets_in_process(job: JobConfig, model: torch.nn.Module, reject_class: bool, scan: PoolScan,
                          device: torch.device | str) -> dict[str, dict[str, np.ndarray]]:
    """`score_sets_on_ray` in this process: the held-out rows and the real OOD sets in memory here, each set
    (each family's too) scored on its own, as `evaluate_classifier` scores them."""
    cfg = job.harden
    images, methods = held_out_rows(scan, cfg.eval_fraction, cfg.split_seed)
    sets = {HELD_OUT: images}
    if len(scan.held_out_families) >= 2:
        methods = np.asarray(methods)
        sets |= {f"{HELD_OUT}:{name}": images[torch.from_numpy(methods == name)] for name in scan.held_out_families}
    sets |= real_ood_sets(scan.image_shape, cfg.real_ood_per_set, cfg.seed)
    return {name: score_images(model, set_images, reject_class, device) for name, set_images in sets.items()}


@functools.lru_cache(maxsize=1)
def real_ood_sets(image_shape: tuple[int, int, int], count: int, seed: int) -> dict[str, torch.Tensor]:
    """`real_ood_images`, rendered once for every round of a run (the sets depend on these arguments only)."""
    return real_ood_images(image_shape, count, seed)


def evaluate_on_pool(job: JobConfig, dataset, model: torch.nn.Module, model_path: Path, reject_class: bool,
                     scan: PoolScan, device: torch.device | str) -> Evaluation:
    """The round's figures (`evaluate_classifier`): the test set scored here, the held-out counterfeits of
    `scan` and the real OOD sets on Ray Data (or here, below `EVAL_IN_PROCESS_LIMIT` rows)."""
    model = model.to(device)
    logits_in = predict_logits(model, dataset.test_images, device)
    clean = float((logits_in.argmax(1) == dataset.test_labels).double().mean())
    actors = eval_actor_count(job, scan.eval_rows + len(REAL_OOD_SETS) * job.harden.real_ood_per_set)
    if actors:
        ensure_ray()
        scores_out = score_sets_on_ray(job, model_path, scan, actors, resolve_use_gpu(job.run))
    else:
        scores_out = score_sets_in_process(job, model, reject_class, scan, device)
    return evaluation_from_scores(clean, job.harden.score, reject_class, row_scores(logits_in, reject_class),
                                  scores_out)
