"""What 28x28 MNIST costs against the 8x8 digits, stage by stage, side by side in one run (a script, not a test).

Each stage is the library call the pipeline's stage runs, in plain torch (no Ray), timed on `digits` (8x8,
1,437 training images) and on `mnist_5k` (28x28, 4,000), both with their default models: the SmallCNN
sizes itself from the input (two conv blocks at 8x8, three at 28x28) and so does the inversion generator.
The table gives each stage's cost ratio (mnist_5k / digits) per unit of work next to the pixel-count
ratio, 784 / 64 = 12.25x. Untrained models: the timings do not depend on the weights.

    PYTHONPATH=. .venv/bin/python benchmarks/image_size_cost.py --repeats 5
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time
from typing import Callable

import torch
from torch.utils.data import DataLoader, TensorDataset

from ccc_ray.classifiers.build import ClassifierConfig, build_classifier
from ccc_ray.classifiers.inference import prepare_for_attack
from ccc_ray.classifiers.training import train_epoch
from ccc_ray.data.dataset import ImageDataset
from ccc_ray.data.sources import DataConfig, load_dataset
from ccc_ray.counterfeits.generate import generate_counterfeits
from ccc_ray.hardening.losses import balanced_class_weights, reject_class_loss
from ccc_ray.classifiers.widen import widen_classifier
from ccc_ray.methods.direct_encoding import DirectEncoding, DirectEncodingConfig
from ccc_ray.methods import MethodContext
from ccc_ray.methods.inversion import InversionConfig, NetworkInversion
from ccc_ray.methods.map_elites import MapElites, MapElitesConfig

DATA_SETS = ("digits", "mnist_5k")
PIXEL_RATIO = (28 * 28) / (8 * 8)
# The pipeline's settings for each stage (today's defaults; after the config rename, update here only).
CLASSIFIER = ClassifierConfig()  # batch 64, Adam 1e-3
AUGMENT_MAX_SHIFT = 1  # as ccc_ray/orchestration/train_classifier.py
INVERSION = InversionConfig()  # batch 256
GENERATE_ROWS, GENERATE_BATCH = 1000, 1000  # generate.per_class 100 x 10 classes, generate.batch_size
POPULATION = 200  # attack.population_size (paper: 200)
HARDEN_BATCH, HARDEN_NOISE, HARDEN_LR = 128, 500, 5e-4  # harden.batch_size, .noise_images, .learning_rate


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per stage; the median is reported")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (a 1-CPU Ray worker uses 1)")
    parser.add_argument("--inversion-steps", type=int, default=5, help="generator steps per timed repeat")
    parser.add_argument("--generations", type=int, default=20, help="MAP-Elites generations per timed repeat")
    return parser.parse_args()


def median_seconds(stage: Callable[[], object], repeats: int) -> float:
    """Median wall seconds of `stage()` over `repeats` calls, after one untimed warm-up call."""
    stage()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        stage()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def classifier_epoch(model: torch.nn.Module, data: ImageDataset) -> Callable[[], float]:
    """One epoch of the train-classifier stage over the whole training split."""
    optimizer = torch.optim.Adam(model.parameters(), lr=CLASSIFIER.learning_rate, weight_decay=CLASSIFIER.weight_decay)
    loader = DataLoader(TensorDataset(data.train_images, data.train_labels), batch_size=CLASSIFIER.batch_size,
                        shuffle=True, generator=torch.Generator().manual_seed(0))
    shift = torch.Generator().manual_seed(1)
    return lambda: train_epoch(model, loader, optimizer, torch.device("cpu"), AUGMENT_MAX_SHIFT, shift)


def inversion_steps(model: torch.nn.Module, data: ImageDataset, steps: int) -> Callable[[], None]:
    """`steps` optimiser steps of the train-generator stage (batch 256) against the frozen classifier."""
    frozen = model.eval().requires_grad_(False)
    method = NetworkInversion(INVERSION, MethodContext(data.image_shape, data.num_classes, frozen))
    latents = torch.Generator().manual_seed(0)
    return lambda: [method.training_step(None, latents, INVERSION.batch_size) for _ in range(steps)]


def generate_rows(model: torch.nn.Module, data: ImageDataset, folder: str) -> Callable[[], object]:
    """The generate stage end to end (sample, quantize, re-score, nearest-train distance, Parquet write),
    with a bar of 1e-9 so every row is kept and written whatever the untrained models produce."""
    method = NetworkInversion(INVERSION, MethodContext(data.image_shape, data.num_classes, model))
    return lambda: generate_counterfeits(
        method, model.eval(), "0" * 64, data, store_dir=folder, run_id=f"cost-{data.name}",
        per_class=GENERATE_ROWS // data.num_classes, confidence_bar=1e-9, seed=1, batch_size=GENERATE_BATCH,
        run_metadata={}, progress=False)


def map_elites_direct(model: torch.nn.Module, data: ImageDataset, generations: int) -> Callable[[], object]:
    """Direct-encoding MAP-Elites as `ccc-ray attack` runs it (channels-last classifier), a fixed number of
    generations (no early stop), so every repeat scores POPULATION x (generations + 1) images."""
    search = MapElites(MapElitesConfig(population_size=POPULATION, max_generations=generations,
                                       stop_at_threshold=False),
                       DirectEncoding(DirectEncodingConfig(), data.image_shape))
    attacked = prepare_for_attack(model)
    return lambda: search.run(attacked, data.num_classes, seed=0)


def hardening_epoch(model: torch.nn.Module, data: ImageDataset) -> Callable[[], None]:
    """One reject-class fine-tuning epoch: the training split plus 500 noise images as class K, on the
    widened (K + 1 output) classifier, batch 128; the harden stage's loop without Ray and without
    counterfeits (which only add rows)."""
    widened = widen_classifier(model, data.image_shape).train().requires_grad_(True)
    noise = torch.rand(HARDEN_NOISE, *data.image_shape, generator=torch.Generator().manual_seed(0))
    images = torch.cat([data.train_images, noise])
    labels = torch.cat([data.train_labels, torch.full((HARDEN_NOISE,), data.num_classes, dtype=torch.int64)])
    weights = balanced_class_weights(torch.bincount(labels, minlength=data.num_classes + 1))
    optimizer = torch.optim.Adam(widened.parameters(), lr=HARDEN_LR)
    loader = DataLoader(TensorDataset(images, labels), batch_size=HARDEN_BATCH, shuffle=True,
                        generator=torch.Generator().manual_seed(0))

    def epoch() -> None:
        for batch_images, batch_labels in loader:
            loss = reject_class_loss(widened(batch_images), batch_labels, weights)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return epoch


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, CPU, {os.cpu_count()} cores, {args.threads} thread(s), load average "
          f"{os.getloadavg()[0]:.1f} at the start; median of {args.repeats} repeats")
    # stage -> data set -> (seconds per repeat, units of work per repeat)
    timings: dict[str, dict[str, tuple[float, int]]] = {}
    units: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="ccc-cost-") as folder:
        for name in DATA_SETS:
            data = load_dataset(DataConfig(name=name))
            torch.manual_seed(0)
            model = build_classifier(CLASSIFIER, data.image_shape, data.num_classes)
            # Each stage gets its own copy: some freeze the model or change its memory layout.
            fresh = lambda: copy.deepcopy(model)  # noqa: E731
            stages = {
                "classifier epoch": (classifier_epoch(fresh(), data), len(data.train_images), "images"),
                "inversion training step": (inversion_steps(fresh(), data, args.inversion_steps),
                                            args.inversion_steps, "steps"),
                "generate (rows written)": (generate_rows(fresh(), data, folder), GENERATE_ROWS, "rows"),
                "MAP-Elites direct": (map_elites_direct(fresh(), data, args.generations),
                                      POPULATION * (args.generations + 1), "evaluations"),
                "hardening epoch (reject)": (hardening_epoch(fresh(), data), len(data.train_images) + HARDEN_NOISE,
                                             "images"),
            }
            for stage, (run, count, unit) in stages.items():
                seconds = median_seconds(run, args.repeats)
                timings.setdefault(stage, {})[name] = (seconds, count)
                units[stage] = unit
                print(f"  {name:<9} {stage:<26} {seconds:8.3f} s for {count} {unit} "
                      f"({count / seconds:,.1f} {unit}/s)", flush=True)

    print(f"\n| stage | digits 8x8 | mnist_5k 28x28 | time ratio | cost ratio per unit (pixels: {PIXEL_RATIO:.2f}x) |")
    print("|---|---|---|---|---|")
    for stage, by_name in timings.items():
        (small_s, small_n), (large_s, large_n) = by_name["digits"], by_name["mnist_5k"]
        unit = units[stage]
        per_unit = (large_s / large_n) / (small_s / small_n)
        print(f"| {stage} | {small_s:.3f} s ({small_n / small_s:,.1f} {unit}/s) | {large_s:.3f} s "
              f"({large_n / large_s:,.1f} {unit}/s) | {large_s / small_s:.2f}x | **{per_unit:.2f}x** |")


if __name__ == "__main__":
    main()
