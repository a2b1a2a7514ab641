"""`generate`: sample counterfeits from a trained method's generator file into the Parquet store.

Two engines, one result. Small runs sample in this process (on a GPU when present): below
`IN_PROCESS_LIMIT` samples, starting Ray Data costs more than it saves. Larger runs (or any run with
`--generate.num_actors N`) go through Ray Data: a range of chunk indices, `map_batches` on an actor pool
(each actor loads the generator and classifier once, one GPU per actor when the cluster has GPUs),
the keep rule inside the actors, and the kept rows streamed back in plan order to the one store writer
here. Each chunk has its own seed, so the rows and their ids are the same whichever engine, and however
many actors, made them; the writer keeps the store's guarantees (nothing visible before the commit, a
re-run replaces its file).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ccc_ray.classifiers.inference import default_device
from ccc_ray.classifiers.weights import classifier_from_bytes, load_classifier
from ccc_ray.counterfeits.generate import (
    GenerateReport,
    KeptChunk,
    generate_counterfeits,
    read_sources,
    sample_chunk,
    sample_plan,
    translate_sources,
    write_report,
)
from ccc_ray.counterfeits.far import FarFromData, fit_far_rule
from ccc_ray.data.sources import DataConfig, load_dataset
from ccc_ray.errors import CccError
from ccc_ray.job import JobConfig
from ccc_ray.methods.generator_file import load_generator
from ccc_ray.orchestration.ray_runtime import actor_pool_size, ensure_ray, resolve_use_gpu, versions
from ccc_ray.store.files import ensure_writable_dir

IN_PROCESS_LIMIT = 20_000  # samples: below this `generate` samples in the calling process by default


class GeneratorActor:
    """A Ray Data actor's state: the generator and the classifier it judges by, loaded once per actor (on the
    actor's GPU when it has one). Subclasses handle one chunk of a sample plan per call."""

    def __init__(self, generator_bytes: bytes, classifier_bytes: bytes, classifier_path: str, data: DataConfig,
                 use_gpu: bool):
        import torch

        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        self.dataset = load_dataset(data)
        classifier, self.classifier_info = classifier_from_bytes(classifier_bytes, classifier_path)
        self.classifier = classifier.to(self.device).eval().requires_grad_(False)
        with tempfile.TemporaryDirectory(prefix="ccc-generate-") as folder:
            file = Path(folder) / "generator.safetensors"
            file.write_bytes(generator_bytes)
            self.method, _ = load_generator(file, self.device, self.classifier)


class ChunkSampler(GeneratorActor):
    """`generate`'s actor: sample a chunk, keep by the keep rule (and the far rule), return the kept rows."""

    def __init__(self, generator_bytes: bytes, classifier_bytes: bytes, classifier_path: str, data: DataConfig,
                 per_class: int, confidence_bar: float, seed: int, use_gpu: bool, far: FarFromData | None):
        super().__init__(generator_bytes, classifier_bytes, classifier_path, data, use_gpu)
        self.per_class, self.confidence_bar, self.seed, self.far = per_class, confidence_bar, seed, far

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        kept = [sample_chunk(self.method, self.classifier, self.dataset, self.per_class, int(chunk), int(start),
                             int(stop), confidence_bar=self.confidence_bar, seed=self.seed, device=self.device,
                             far=self.far)
                for chunk, start, stop in zip(batch["chunk"], batch["start"], batch["stop"])]
        return chunk_columns(kept)


def chunk_columns(chunks: list[KeptChunk]) -> dict[str, np.ndarray]:
    """Kept rows of several chunks as equal-length columns (Ray Data's batch format); `chunk` and `sampled`
    ride along on every row so the driver can rebuild the chunks, and an empty chunk leaves one marker row."""
    columns: dict[str, list] = {name: [] for name in ("chunk", "sampled", "marker", "images_hwc", "targets",
                                                      "predicted", "confidence", "nearest_train_l2",
                                                      "sample_index", "source_id", "mask", "has_mask",
                                                      "near_dropped")}
    for kept in chunks:
        rows = len(kept.targets)
        count = max(rows, 1)
        columns["chunk"] += [kept.chunk] * count
        columns["sampled"] += [kept.sampled] * count
        columns["marker"] += [rows == 0] * count
        shape = kept.images_hwc.shape[1:]
        images = kept.images_hwc if rows else np.zeros((1, *shape), np.uint8)
        columns["images_hwc"] += list(images)
        for name in ("targets", "predicted", "confidence", "nearest_train_l2", "sample_index"):
            values = getattr(kept, name)
            columns[name] += list(values) if rows else [values.dtype.type(0)]
        columns["source_id"] += list(kept.source_id) if kept.source_id is not None and rows else [None] * count
        mask = kept.mask if kept.mask is not None and rows else np.zeros((count, *shape[:2]), np.uint8)
        columns["mask"] += list(mask)
        columns["has_mask"] += [kept.mask is not None] * count
        columns["near_dropped"] += [kept.near_dropped] * count
    return {name: np.array(values, dtype=object) if name == "source_id" else np.stack(values)
            if name in ("images_hwc", "mask") else np.array(values) for name, values in columns.items()}


def chunks_from_batches(batches) -> Iterator[KeptChunk]:
    """Rebuild the KeptChunks from Ray Data's batches (in plan order)."""
    for batch in batches:
        for chunk in dict.fromkeys(batch["chunk"].tolist()):
            rows = (batch["chunk"] == chunk) & ~batch["marker"]
            has_mask = bool(batch["has_mask"][batch["chunk"] == chunk][0])
            source_ids = batch["source_id"][rows]
            yield KeptChunk(
                int(chunk), int(batch["sampled"][batch["chunk"] == chunk][0]), batch["images_hwc"][rows],
                batch["targets"][rows].astype(np.int64), batch["predicted"][rows].astype(np.int64),
                batch["confidence"][rows].astype(np.float32), batch["nearest_train_l2"][rows].astype(np.float32),
                batch["sample_index"][rows].astype(np.int64),
                [str(s) for s in source_ids] if len(source_ids) and source_ids[0] is not None else None,
                batch["mask"][rows] if has_mask else None,
                int(batch["near_dropped"][batch["chunk"] == chunk][0]))


def chunk_pipeline(plan: list[tuple[int, int, int]], actor_class: type[GeneratorActor], constructor_kwargs: dict,
                   actors: int, use_gpu: bool, cpus_per_actor: float):
    """A sample plan (chunk, start, stop) through a Ray Data pool of `actors` actors of `actor_class`, one chunk
    per call; their output batches streamed back in plan order. The pipeline of `generate` and of the
    re-attack alike (`ccc_ray/orchestration/reattack.py`)."""
    import ray.data

    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # chunks reach the caller in plan order
    ds = ray.data.from_items([{"chunk": c, "start": a, "stop": b} for c, a, b in plan])
    ds = ds.map_batches(actor_class, batch_size=1, concurrency=max(1, min(actors, len(plan))),  # no idle actors
                        num_gpus=1 if use_gpu else 0,
                        num_cpus=cpus_per_actor, fn_constructor_kwargs=constructor_kwargs)
    return ds.iter_batches(batch_size=None, batch_format="numpy")


def ray_data_chunks(job: JobConfig, generator_file: Path, actors: int, use_gpu: bool, far: FarFromData | None):
    """The run's chunks sampled by a Ray Data actor pool, streamed back in plan order."""
    plan = sample_plan(len(load_dataset(job.data).class_names), job.generate.per_class, job.generate.batch_size)
    classifier_file = job.run.classifier_file
    return chunks_from_batches(chunk_pipeline(
        plan, ChunkSampler,
        {"generator_bytes": generator_file.read_bytes(), "classifier_bytes": classifier_file.read_bytes(),
         "classifier_path": str(classifier_file), "data": job.data, "per_class": job.generate.per_class,
         "confidence_bar": job.keep.confidence_bar, "seed": job.generate.seed, "use_gpu": use_gpu, "far": far},
        actors, use_gpu, job.generate.cpus_per_actor))


def actor_count(job: JobConfig) -> int:
    """0 = sample in this process; else the size of the Ray Data actor pool."""
    samples = job.generate.per_class * len(load_dataset(job.data).class_names)
    if job.generate.num_actors > 0:
        return job.generate.num_actors
    if samples < IN_PROCESS_LIMIT:
        return 0
    ensure_ray()
    return actor_pool_size(job.run, job.generate.cpus_per_actor)


def generate_from_sources(job: JobConfig) -> GenerateReport:
    """`generate --generate.sources ... --generate.targets ...`: translate the given images, one counterfeit each,
    into the store as run `<run_id>-sources` (beside, not over, the run's sampled rows). Every check runs
    before anything is written."""
    import torch

    dataset = load_dataset(job.data)
    classifier, info = load_classifier(job.run.classifier_file, dataset.image_shape, dataset.num_classes)
    device = default_device()
    classifier.to(device).eval().requires_grad_(False)
    method, meta = load_generator(job.run.generator_file(job.generate.method), device, classifier)
    if meta["classifier_sha256"] != info.sha256:
        raise CccError(f"the generator was trained against classifier {meta['classifier_sha256'][:12]}, "
                       f"but {str(job.run.classifier_file)!r} is {info.sha256[:12]}; retrain the generator")
    if not method.uses_sources:
        raise CccError(f"generate.sources: {method.name} does not start from an image, so it has nothing to "
                       "translate; leave --generate.sources out")
    images, ids, labels = read_sources(dataset, job.generate.sources)
    try:
        targets = method.check_targets(torch.tensor(job.generate.targets, dtype=torch.int64))
    except CccError as error:
        raise CccError(f"generate.targets: {error}") from None
    for source_id, label, target in zip(ids, labels, targets.tolist()):
        if label == target:
            raise CccError(f"generate.targets: target {target} of source {source_id} is its own class "
                           f"({dataset.class_names[target]}); a counterfactual needs another class")
    ensure_writable_dir(job.run.store_dir, "run.counterfeit_store")
    ensure_writable_dir(job.run.run_dir, "run.output_dir")
    run_id = f"{job.run.run_id}-sources"
    far = fit_far_rule(job.far, dataset, job.run.classifier_file) if job.far.gate_store else None
    run_metadata = {"config": asdict(job), "classifier_sha256": info.sha256, "generator_steps": meta.get("steps"),
                    "versions": versions()}
    report = translate_sources(method, classifier, info.sha256, dataset, images, ids, targets,
                               store_dir=job.run.store_dir, run_id=run_id, confidence_bar=job.keep.confidence_bar,
                               seed=job.generate.seed, run_metadata=run_metadata, device=device, far=far)
    write_report(report, job.run.run_dir / f"generate-{method.name}-sources.json")
    return report


def generate_from_file(job: JobConfig, progress: bool = True) -> GenerateReport:
    """Sample `generate.per_class` per class from the run's generator file, keep by the keep rule, store."""
    dataset = load_dataset(job.data)
    classifier, info = load_classifier(job.run.classifier_file, dataset.image_shape, dataset.num_classes)
    device = default_device()
    classifier.to(device).eval().requires_grad_(False)
    generator_file = job.run.generator_file(job.generate.method)
    method, meta = load_generator(generator_file, device, classifier)
    if meta["classifier_sha256"] != info.sha256:
        raise CccError(f"the generator was trained against classifier {meta['classifier_sha256'][:12]}, "
                       f"but {str(job.run.classifier_file)!r} is {info.sha256[:12]}; retrain the generator")
    ensure_writable_dir(job.run.store_dir, "run.counterfeit_store")
    ensure_writable_dir(job.run.run_dir, "run.output_dir")
    run_metadata = {"config": asdict(job), "classifier_sha256": info.sha256, "generator_steps": meta.get("steps"),
                    "versions": versions()}
    far = fit_far_rule(job.far, dataset, job.run.classifier_file) if job.far.gate_store else None
    actors = actor_count(job)
    chunks = None
    if actors:
        ensure_ray()
        chunks = ray_data_chunks(job, generator_file, actors, resolve_use_gpu(job.run), far)
    report = generate_counterfeits(
        method, classifier, info.sha256, dataset, store_dir=job.run.store_dir, run_id=job.run.run_id,
        per_class=job.generate.per_class, confidence_bar=job.keep.confidence_bar, seed=job.generate.seed,
        batch_size=job.generate.batch_size, run_metadata=run_metadata, device=device, progress=progress,
        chunks=chunks, far=far)
    write_report(report, job.run.run_dir / f"generate-{method.name}.json")
    return report
