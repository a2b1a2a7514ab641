"""Today's data guard against the class-aware one (issue 24) on a classifier file, in one process.

    python benchmarks/class_guard.py --classifier ccc-runs/default/classifier-hardened.safetensors

Wraps the file's unguarded classifier in each guard (fitted on the digits training split) and prints, as
JSON rows: clean accuracy on the test split (argmax over the real classes; reject counts as wrong), the
share of test images answered >= the bar on their own class, the largest distance at which any class can
still reach the bar (the far guarantee holds while it lies below the far radius), the forward time
against the unguarded model (batch 256, 1 thread, median of 7 side-by-side runs), and a white-box attack:
targeted PGD (L-inf `--epsilon`, `--steps` steps of `--step-size`, random start) on the guarded model
from the first `--attacks` test digits toward a random wrong class: the share reaching the bar on the target,
and how many of those lie beyond the far radius.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ccc_ray.classifiers.guard import (  # noqa: E402
    ClassDataGuard,
    DataGuard,
    images_by_class,
    leave_one_out_distances,
    unguarded,
)
from ccc_ray.classifiers.weights import load_classifier  # noqa: E402
from ccc_ray.counterfeits.quality import nearest_distances  # noqa: E402
from ccc_ray.data.sources import DataConfig, load_dataset  # noqa: E402


def per_class_guard(model, images, labels, edge_percentile, reject_percentile, cap, reject_class):
    """The class-aware guard with each class's own percentiles (the alternative to one pooled percentile)."""
    pooled = ClassDataGuard.fit(model, images, labels, edge_percentile, reject_percentile, cap, reject_class)
    distances = [leave_one_out_distances(group).double() for group in images_by_class(images, labels)]
    edges = torch.tensor([float(torch.quantile(d, edge_percentile / 100)) for d in distances])
    rejects = torch.tensor([float(torch.quantile(d, reject_percentile / 100)) for d in distances])
    return ClassDataGuard(model, pooled.reference, edges, rejects, cap, reject_class)


def bar_distance(guard: DataGuard, bar: float) -> float:
    """The largest distance at which g reaches `bar`: g = bar at reject - logit(bar) / slope."""
    reject, slope = guard.guard_constants[..., 1], guard.guard_constants[..., 3]
    return float((reject - math.log(bar / (1 - bar)) / slope).max())


def forward_ratio(model, plain, images, repeats=7) -> float:
    ratios = []
    with torch.no_grad():
        for _ in range(repeats):
            start = time.perf_counter()
            plain(images)
            middle = time.perf_counter()
            model(images)
            ratios.append((time.perf_counter() - middle) / (middle - start))
    return statistics.median(ratios)


def pgd_success(model, images, targets, epsilon, steps, step_size, bar, seed) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = (images + (torch.rand(images.shape, generator=generator) * 2 - 1) * epsilon).clamp(0, 1)
    for _ in range(steps):
        x.requires_grad_(True)
        loss = model(x).log_softmax(1).gather(1, targets[:, None]).sum()
        (grad,) = torch.autograd.grad(loss, x)
        x = (x.detach() + step_size * grad.sign())
        x = torch.min(torch.max(x, images - epsilon), images + epsilon).clamp(0, 1)
    with torch.no_grad():
        p = model(x).softmax(1).gather(1, targets[:, None])[:, 0]
    return p >= bar, x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classifier", required=True)
    parser.add_argument("--percentiles", default="90,95,98")
    parser.add_argument("--reject-percentiles", default="99.9")
    parser.add_argument("--kinds", default="pixels,class_pixels,per_class")
    parser.add_argument("--cap", type=float, default=0.98)
    parser.add_argument("--bar", type=float, default=0.99)
    parser.add_argument("--attacks", type=int, default=100)
    parser.add_argument("--epsilon", type=float, default=0.3)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--step-size", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = load_dataset(DataConfig())
    loaded, info = load_classifier(args.classifier, data.image_shape, data.num_classes)
    plain = unguarded(loaded).eval()
    reject = info.reject_class
    held_out = nearest_distances(data.test_images, data.train_images)
    radius = float(torch.quantile(held_out.double(), 0.95))
    print(json.dumps({"classifier": info.sha256[:16], "reject_class": reject, "far_radius": round(radius, 4)}))
    guards = {"none": plain}
    kinds = args.kinds.split(",")
    for reject_percentile in (float(p) for p in args.reject_percentiles.split(",")):
        for edge in (float(p) for p in args.percentiles.split(",")):
            fits = (reject_percentile, args.cap, reject)
            tag = f"{edge:g}/{reject_percentile:g}"
            if "pixels" in kinds:
                guards[f"pixels {tag}"] = DataGuard.fit(plain, data.train_images, edge, *fits)
            if "class_pixels" in kinds:
                guards[f"class_pixels pooled {tag}"] = ClassDataGuard.fit(plain, data.train_images,
                                                                          data.train_labels, edge, *fits)
            if "per_class" in kinds:
                guards[f"class_pixels per-class {tag}"] = per_class_guard(plain, data.train_images,
                                                                          data.train_labels, edge, *fits)
    targets_gen = torch.Generator().manual_seed(args.seed)
    sources = data.test_images[:args.attacks]
    labels = data.test_labels[:args.attacks]
    targets = (labels + torch.randint(1, data.num_classes, labels.shape, generator=targets_gen)) % data.num_classes
    timing = data.test_images[:256]
    for name, model in guards.items():
        model.eval()
        with torch.no_grad():
            p = model(data.test_images).softmax(1)
        own = p.gather(1, data.test_labels[:, None])[:, 0]
        row = {"guard": name, "clean_accuracy": round(float((p.argmax(1) == data.test_labels).float().mean()), 4),
               "own_class_at_bar": round(float((own >= args.bar).float().mean()), 4)}
        if isinstance(model, DataGuard):
            row["bar_distance"] = round(bar_distance(model, args.bar), 4)
            row["edge_distance_max"] = round(model.edge_distance, 4)
            row["forward_ratio"] = round(forward_ratio(model, plain, timing), 2)
        start = time.perf_counter()
        success, adversarial = pgd_success(model, sources, targets, args.epsilon, args.steps, args.step_size,
                                           args.bar, args.seed)
        distances = torch.cdist(adversarial.flatten(1), data.train_images.flatten(1))
        far = distances.min(1).values >= radius
        # a nearest-neighbour reading of the success (the guard's own distance: a hint, not a judge)
        other = data.train_labels[distances.argmin(1)] != targets
        row.update({"pgd_success": round(float(success.float().mean()), 3),
                    "pgd_successes_far": int((success & far).sum()),
                    "pgd_successes_nearest_other_class": int((success & other).sum()),
                    "pgd_seconds": round(time.perf_counter() - start, 1)})
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
