"""Hardening under Ray Train: fine-tune the baseline classifier on its data plus counterfeits.

The counterfeit pool reaches the workers as a Ray Data shard (`ray.train.get_dataset_shard`): Ray Data
tasks read the store files one row group at a time and keep only the training rows (split by id exactly
as `split_counterfeits` splits them), so neither the driver, which only scans the pool (ids, counts,
checks), nor a worker holds more than its window of it (`ccc_ray/hardening/pool.py`). A pool of at most
`POOL_IN_MEMORY_BYTES` of pixels is read by the driver instead and handed over as blocks, the same rows
in the same order. The real training
data arrives the same way, as shares of the training split (`ccc_ray/orchestration/training_data.py`),
with the class counts of the whole split for the class weights. One checkpoint per
epoch (model, optimiser and, in adaptive mode, the in-loop attacker's generator and its optimiser); a
second start of the same run resumes from the last one. `hardening_parts` and `hardening_epoch` are the
whole fine-tuning; the Ray loop wraps them, and `benchmarks/adaptive_hardening.py` runs them in one
process to compare modes.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import ray.data
import ray.train
import ray.train.torch
import torch
from ray.data.extensions import ArrowTensorArray
from torch.utils.data import DataLoader, TensorDataset

from ccc_ray.classifiers.guard import ClassDataGuard, DataGuard
from ccc_ray.classifiers.training import accuracy, random_shift
from ccc_ray.classifiers.weights import ClassifierInfo, classifier_from_bytes, save_classifier
from ccc_ray.classifiers.widen import widen_classifier
from ccc_ray.counterfeits.far import PIXELS, FarFromData, fit_far_rule
from ccc_ray.data.sources import load_dataset
from ccc_ray.hardening.adaptive import AdaptiveOutliers, noise_images, pgd_toward_classes
from ccc_ray.hardening.losses import balanced_class_weights, outlier_exposure_loss, reject_class_loss
from ccc_ray.hardening.pool import SCAN_ROWS, CounterfeitWindow, PoolScan, scan_pool, training_rows
from ccc_ray.errors import CccError
from ccc_ray.job import HardenSettings, JobConfig
from ccc_ray.methods.base import MethodContext
from ccc_ray.methods.inversion import InversionConfig, NetworkInversion
from ccc_ray.orchestration.checkpoints import checkpoint_to_report, load_checkpoint_state
from ccc_ray.orchestration.ray_runtime import claim_run, ensure_ray, fit, quiet_worker_logs
from ccc_ray.orchestration.training_data import TrainingDataInfo, datasets_from_memory, ingest_config, worker_data
from ccc_ray.store.files import ensure_writable_dir

COUNTERFEITS = "counterfeits"  # the name of the pool's dataset, as the workers ask for their shard
READ_TASKS = 2  # store files read at once
POOL_IN_MEMORY_BYTES = 1 << 20  # training rows' pixels up to which the driver reads the pool (`counterfeit_dataset`)


def hardening_model(baseline: torch.nn.Module, mode: str, image_shape: tuple[int, int, int]) -> torch.nn.Module:
    return baseline if mode == "oe" else widen_classifier(baseline, image_shape)


@dataclass
class HardeningParts:
    """What one worker trains with: the model, its optimiser, the data, and (adaptive) the attacker."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    loader: DataLoader  # (image, label) batches: real images, plus labelled counterfeits for reject
    outlier_loader: DataLoader | None  # oe: counterfeit batches (None: drawn from `window`)
    class_weights: torch.Tensor | None  # reject and adaptive: K + 1 weights
    adaptive: AdaptiveOutliers | None
    window: CounterfeitWindow | None = None  # a pool larger than the worker holds, streamed once per epoch


@dataclass(frozen=True)
class WholeCounts:
    """The sizes of the whole training data, for a worker that holds one share of it: class weights are
    those of the whole set, as they were when every worker held all of it."""

    class_counts: torch.Tensor  # int64 K: real training images per class
    pool_rows: int  # training counterfeits in the whole pool


def share_of(count: int, rank: int, world: int) -> torch.Tensor:
    """Rank `rank`'s indices into `count` rows, dealt as DistributedSampler deals them (padded with the
    first indices, so every rank gets ceil(count / world)); all of them for one worker."""
    index = torch.arange(count)
    index = torch.cat([index, index[:(-count) % world]]) if count else index
    return index[rank::world]


def hardening_parts(cfg: HardenSettings, baseline: torch.nn.Module, dataset,
                    counterfeits: torch.Tensor | CounterfeitWindow, far: FarFromData | None, device, world: int = 1,
                    confidence_bar: float = 0.99, rank: int = 0, whole: WholeCounts | None = None) -> HardeningParts:
    """Model, optimiser, loaders and attacker for `cfg.mode`; seeded from `cfg.seed` (and `rank`).

    `dataset`: the run's data, or (with `whole`) this worker's share of its training split.
    `counterfeits`: float32 N x C x H x W in [0, 1], or a window onto a pool streamed through the worker
    (adaptive and oe draw from it; reject needs the whole pool, so a window that cannot hold it fails).
    `far`: the fitted far rule (adaptive mode only).
    """
    if cfg.mode == "auto":
        raise CccError("harden.mode auto is made concrete per data set first (with_concrete_mode)")
    window = counterfeits if isinstance(counterfeits, CounterfeitWindow) else None
    if window is not None and (window.fits or cfg.mode == "reject"):
        counterfeits, window = window.images(), None
    torch.manual_seed(cfg.seed)
    model = hardening_model(baseline, cfg.mode, dataset.image_shape).to(device)
    k = dataset.num_classes
    per_worker = max(1, cfg.batch_size // world)
    images, labels = dataset.train_images, dataset.train_labels
    class_counts = whole.class_counts if whole is not None else torch.bincount(labels, minlength=k)
    class_weights, adaptive = None, None
    if cfg.mode == "reject":
        noise = noise_images(cfg.noise_images, dataset.image_shape, torch.Generator().manual_seed(cfg.seed))
        outliers = torch.cat([counterfeits, noise[share_of(len(noise), rank, world)]])
        images = torch.cat([images, outliers])
        labels = torch.cat([labels, torch.full((len(outliers),), k, dtype=torch.int64)])
        pool_rows = whole.pool_rows if whole is not None else len(counterfeits)
        class_weights = balanced_class_weights(
            torch.cat([class_counts, torch.tensor([pool_rows + len(noise)])])).to(device)
    elif cfg.mode == "adaptive":
        inversion = None
        if cfg.attacker_steps:
            context = MethodContext(dataset.image_shape, k, model, device, confidence_bar)
            inversion = NetworkInversion(InversionConfig(seed=cfg.seed), context)
        adaptive = AdaptiveOutliers(inversion, counterfeits, dataset.image_shape, far,
                                    cfg.outliers_per_step, cfg.mine_pool, cfg.attacker_steps, cfg.pgd_steps,
                                    cfg.pgd_epsilon)
        # The reject class weighs as much as one average real class, as in reject mode.
        steps = -(-int(class_counts.sum()) // cfg.batch_size)
        counts = torch.cat([class_counts, torch.tensor([steps * cfg.outliers_per_step])])
        class_weights = balanced_class_weights(counts).to(device) * torch.tensor(
            [1.0] * k + [cfg.reject_weight], device=device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate)
    # Each worker shuffles its own share (no DistributedSampler), anew each epoch.
    loader = DataLoader(TensorDataset(images, labels), batch_size=per_worker, shuffle=True,
                        generator=torch.Generator().manual_seed(cfg.seed + rank * 10_007))
    outlier_loader = None if window is not None else DataLoader(
        TensorDataset(counterfeits), batch_size=per_worker, shuffle=True,
        generator=torch.Generator().manual_seed(cfg.seed + 1))
    return HardeningParts(model, optimizer, loader, outlier_loader, class_weights, adaptive, window)


def hardening_epoch(parts: HardeningParts, cfg: HardenSettings, device, seed: int) -> float:
    """One pass over the real data (every batch holds clean images); returns the mean loss.

    `seed` is per (run seed, rank, epoch), so shifts and attacks do not depend on the worker count.
    `parts.model` may be DDP-wrapped; the attacker works on the plain module it was built with.
    """
    model = parts.model
    model.train()
    shift = torch.Generator().manual_seed(seed)
    attack = torch.Generator().manual_seed(seed + 1)
    window = parts.window
    outlier_batches = itertools.cycle(parts.outlier_loader) if window is None else None
    if window is not None:
        window.start_epoch(len(parts.loader))
    total, count = 0.0, 0
    for batch_images, batch_labels in parts.loader:
        batch_images = random_shift(batch_images, 1, shift).to(device)
        batch_labels = batch_labels.to(device)
        if cfg.mode == "reject":
            if cfg.adversarial_reals:
                batch_images, batch_labels = with_adversarial_reals(
                    getattr(model, "module", model), batch_images, batch_labels, parts.class_weights.numel() - 1,
                    cfg, attack)
            loss = reject_class_loss(model(batch_images), batch_labels, parts.class_weights)
        elif cfg.mode == "adaptive":
            outliers = parts.adaptive.outliers(getattr(model, "module", model), attack, device)
            labels = torch.cat([batch_labels, torch.full((len(outliers),), parts.class_weights.numel() - 1,
                                                         dtype=torch.int64, device=device)])
            loss = reject_class_loss(model(torch.cat([batch_images, outliers])), labels, parts.class_weights)
        else:  # oe; a streamed pool gives a random batch of the rows its window holds now
            outlier_images = next(outlier_batches)[0] if window is None else \
                window[torch.randint(len(window), (len(batch_images),), generator=attack)]
            logits = model(torch.cat([batch_images, outlier_images.to(device)]))
            loss = outlier_exposure_loss(logits[:len(batch_images)], batch_labels, logits[len(batch_images):],
                                         cfg.outlier_weight)
        parts.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        parts.optimizer.step()
        total += float(loss.detach()) * len(batch_labels)
        count += len(batch_labels)
        if window is not None:
            window.step()
    if window is not None:
        window.finish_epoch()
    return total / max(count, 1)


def with_adversarial_reals(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, reject: int,
                           cfg: HardenSettings, rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch plus `adversarial_reals` of its real images moved by targeted PGD toward a random wrong class
    (`pgd_steps` steps within `pgd_epsilon`, L-inf), labelled reject (the last output). Why (issue 24): a real 9
    pushed until the model calls it "3" is what a user sees as confidently wrong; trained as reject, the
    model stops answering a class on the perturbations that make it change its mind (Madry et al.'s
    adversarial training, with the reject class of seed 002's joint model as the label)."""
    real = torch.nonzero(labels < reject).squeeze(1)
    count = int(len(real) * cfg.adversarial_reals)
    if count == 0:
        return images, labels
    chosen = real[torch.randperm(len(real), generator=rng)[:count].to(real.device)]
    wrong = (labels[chosen] + torch.randint(1, reject, (count,), generator=rng).to(labels.device)) % reject
    moved = pgd_toward_classes(model, images[chosen], wrong, cfg.pgd_steps, cfg.pgd_epsilon)
    return torch.cat([images, moved]), torch.cat([labels, torch.full_like(wrong, reject)])


def epoch_seed(seed: int, rank: int, epoch: int) -> int:
    return seed * 1_000_003 + rank * 10_007 + epoch * 101


def harden_train_loop(loop_config: dict) -> None:
    quiet_worker_logs()
    job: JobConfig = loop_config["job"]
    cfg = job.harden
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    data: TrainingDataInfo = loop_config["data"]
    dataset = worker_data(data, rank, world)  # its share of the training split; the test split on rank 0
    baseline, info = classifier_from_bytes(loop_config["baseline_bytes"], loop_config["baseline_path"],
                                           data.image_shape, data.num_classes)
    shard = ray.train.get_dataset_shard(COUNTERFEITS)
    window = CounterfeitWindow(
        lambda: (batch["image"] for batch in shard.iter_batches(batch_size=SCAN_ROWS, batch_format="numpy")),
        loop_config["train_rows"] // world, cfg.pool_window(data.image_shape))
    far = None
    if cfg.mode == "adaptive":
        # The one far rule, fitted here on the run's data (feature space embeds with the baseline). Its
        # reference is the whole training split by definition (the nearest training image), so it comes
        # whole, through the object store, not as a share.
        far = fit_far_rule(job.far, ray.get(loop_config["far_data"]), model=baseline)
    whole = WholeCounts(torch.tensor(data.train_class_counts), loop_config["train_rows"])
    parts = hardening_parts(cfg, baseline, dataset, window, far, device, world,
                            job.keep.confidence_bar, rank, whole)
    start_epoch = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        state = load_checkpoint_state(checkpoint)
        parts.model.load_state_dict(state["model"])
        parts.optimizer.load_state_dict(state["optimizer"])
        if parts.adaptive is not None:
            parts.adaptive.load_state_dict(state.get("attacker", {}))
        start_epoch = int(state["epoch"])
        if rank == 0:
            print(f"[harden] resumed from the checkpoint after epoch {start_epoch}", flush=True)
    parts.model = ray.train.torch.prepare_model(parts.model)
    for epoch in range(start_epoch, cfg.epochs):
        loss = hardening_epoch(parts, cfg, device, epoch_seed(cfg.seed, rank, epoch))
        inner = getattr(parts.model, "module", parts.model)
        # rank 0's shares of the real data and of the pool
        metrics = {"epoch": epoch + 1, "train_loss": loss, "train_rows": len(dataset.train_labels),
                   "counterfeit_rows": window.read}
        if rank == 0:  # only rank 0's metrics are reported
            # argmax over every output: a test image sent to the reject class counts as an error.
            metrics["clean_accuracy"] = accuracy(inner, dataset.test_images, dataset.test_labels, device)
            print(f"[harden {cfg.mode}] epoch {epoch + 1}/{cfg.epochs} loss {loss:.4f} "
                  f"clean accuracy {metrics['clean_accuracy']:.4f}", flush=True)
        state = {"model": inner.state_dict(), "optimizer": parts.optimizer.state_dict(), "epoch": epoch + 1}
        if parts.adaptive is not None:  # the attacker resumes where it stopped, not from scratch
            state["attacker"] = parts.adaptive.state_dict()
        with checkpoint_to_report(state if rank == 0 else None) as ckpt:
            ray.train.report(metrics, checkpoint=ckpt)


def fine_tune_in_process(baseline: torch.nn.Module, cfg: HardenSettings, dataset, counterfeits: torch.Tensor,
                         far: FarFromData, device="cpu") -> torch.nn.Module:
    """The same fine-tuning on one process without Ray (benchmarks compare modes this way)."""
    parts = hardening_parts(cfg, baseline, dataset, counterfeits, far, device)
    for epoch in range(cfg.epochs):
        hardening_epoch(parts, cfg, device, epoch_seed(cfg.seed, 0, epoch))
    return parts.model.eval()


def with_concrete_mode(job: JobConfig, image_shape: tuple[int, int, int]) -> JobConfig:
    """`harden.mode auto` made concrete for images of `image_shape`: reject behind the data guard where the
    guard applies (it refuses far images by construction; adaptive training would only cost clean
    accuracy), adaptive where it does not."""
    if job.harden.mode != "auto":
        return job
    mode = "reject" if guard_applies(job, image_shape) else "adaptive"
    return dataclasses.replace(job, harden=dataclasses.replace(job.harden, mode=mode))


def guard_kind(job: JobConfig, image_shape: tuple[int, int, int]) -> str | None:
    """The data guard `harden.guard` puts around the hardened model for images of `image_shape` (a kind of
    `ccc_ray/classifiers/guard.py`), or None: `auto` is the class-aware guard where the far rule measures
    pixels, no guard above that."""
    guard = job.harden.guard
    if guard == "auto":
        return ClassDataGuard.kind if job.far.chosen_space(image_shape) == PIXELS else None
    return None if guard == "off" else guard


def guard_applies(job: JobConfig, image_shape: tuple[int, int, int]) -> bool:
    """Whether `harden.guard` puts a data guard around the hardened model for images of `image_shape`."""
    return guard_kind(job, image_shape) is not None


def guarded(job: JobConfig, model: torch.nn.Module, dataset) -> torch.nn.Module:
    """The hardened model behind the data guard (`harden.guard`), fitted on the run's training images."""
    cfg = job.harden
    kind = guard_kind(job, dataset.image_shape)
    fitting = (cfg.guard_edge_percentile, cfg.guard_reject_percentile, cfg.guard_cap, cfg.mode != "oe")
    if kind == DataGuard.kind:
        guard = DataGuard.fit(model, dataset.train_images, *fitting)
    elif kind == ClassDataGuard.kind:
        guard = ClassDataGuard.fit(model, dataset.train_images, dataset.train_labels, *fitting)
        if cfg.guard_margin_percentile:
            guard.with_margin(dataset.train_images, dataset.train_labels, cfg.guard_margin_percentile,
                              cfg.guard_reject_percentile)
    else:
        return model
    if cfg.guard_confident_share:
        guard.sharpen(dataset.train_images, dataset.train_labels, job.keep.confidence_bar, cfg.guard_confident_share)
    return guard


def _training_parts(files, image_shape: tuple[int, int, int], eval_fraction: float, seed: int,
                    dropped: dict[str, list[str]]) -> Iterator[np.ndarray]:
    """The training rows of `files`, in file order, one row group at a time (uint8 N x C x H x W)."""
    for file in files:
        yield from training_rows(str(file), image_shape, eval_fraction, seed, dropped.get(str(file), ()))


def _read_training_rows(batch: dict[str, np.ndarray], image_shape: tuple[int, int, int], eval_fraction: float,
                        seed: int, dropped: dict[str, list[str]]) -> Iterator[dict[str, np.ndarray]]:
    """A Ray Data task: the training rows of its store files, one row group at a time."""
    for images in _training_parts(batch["file"], image_shape, eval_fraction, seed, dropped):
        yield {"image": images}


def counterfeit_dataset(scan: PoolScan, cfg: HardenSettings):
    """The pool's training rows as a Ray Dataset of uint8 C x H x W `image`s, in file order.

    Up to `POOL_IN_MEMORY_BYTES` of pixels the driver reads them here and hands them over as blocks: read
    tasks start worker processes that import torch, seconds per round on a small node for a pool of a few
    thousand rows. Above it, one read task per store file, so the driver never holds the pool. The reads
    reserve no CPU: they are light next to training, and must not wait for CPUs the Train workers hold (on
    a cluster the workers fill, a CPU-reserving read would never be scheduled).
    """
    ensure_ray()
    if 0 < scan.train_rows * math.prod(scan.image_shape) <= POOL_IN_MEMORY_BYTES:
        parts = _training_parts(scan.files, scan.image_shape, cfg.eval_fraction, cfg.split_seed, scan.dropped)
        return ray.data.from_arrow([pa.table({"image": ArrowTensorArray.from_numpy(images)}) for images in parts])
    files = ray.data.from_items([{"file": file} for file in scan.files], override_num_blocks=len(scan.files))
    return files.map_batches(_read_training_rows, batch_size=1, num_cpus=0,
                             compute=ray.data.TaskPoolStrategy(size=READ_TASKS),
                             fn_kwargs={"image_shape": scan.image_shape, "eval_fraction": cfg.eval_fraction,
                                        "seed": cfg.split_seed, "dropped": scan.dropped})


def harden_classifier(job: JobConfig, baseline_path: Path, stores: list[str], output: Path, name: str) -> tuple[ClassifierInfo, dict]:
    """Fine-tune the classifier at `baseline_path` with the counterfeits of `stores`; write it to `output`."""
    dataset = load_dataset(job.data)
    job = with_concrete_mode(job, dataset.image_shape)
    if not baseline_path.is_file():
        raise CccError(f"run.classifier_path: {str(baseline_path)!r} does not exist; run `ccc-ray train-classifier` first")
    raw = baseline_path.read_bytes()
    baseline, info = classifier_from_bytes(raw, str(baseline_path), dataset.image_shape, dataset.num_classes)
    if info.reject_class:
        raise CccError(f"{str(baseline_path)!r} already has a reject class; harden the baseline classifier")
    # The driver scans the pool (checks, counts, ids) and fails on bad stores before any worker starts.
    scan = scan_pool(stores, dataset.image_shape, dataset.num_classes, job.harden.eval_fraction,
                     job.harden.split_seed)
    ensure_writable_dir(output.parent, "run.output_dir")
    claim_run(job.run, name, {"harden": asdict(job.harden), "baseline": info.sha256, "stores": sorted(stores)})
    # The driver holds the data set anyway (the guard is fitted on it below); the workers get shares.
    data, build_datasets = datasets_from_memory(dataset)
    datasets = build_datasets()
    loop_config = {"job": job, "baseline_bytes": raw, "baseline_path": str(baseline_path),
                   "train_rows": scan.train_rows, "data": data}
    if job.harden.mode == "adaptive":
        loop_config["far_data"] = ray.put(dataset)
    result = fit(harden_train_loop, loop_config, job.run, name, "hardening",
                 datasets={**datasets, COUNTERFEITS: counterfeit_dataset(scan, job.harden)},
                 # plan order: with one worker the rows arrive in the order `load_dataset` and
                 # `split_counterfeits` give them
                 dataset_config=ingest_config(COUNTERFEITS))
    model = hardening_model(baseline, job.harden.mode, dataset.image_shape)
    model.load_state_dict(load_checkpoint_state(result.checkpoint)["model"])
    model = guarded(job, model.eval(), dataset)
    hardened = save_classifier(output, model, info.config, dataset.image_shape, list(dataset.class_names),
                               job.data.name, reject_class=job.harden.mode != "oe")
    return hardened, dict(result.metrics or {})
