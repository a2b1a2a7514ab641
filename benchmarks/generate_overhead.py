"""Issue 16 overhead figure: `generate`'s rows per second against the classifier's own batched forward.

Both sides score the same number of images at the same batch size, in this process, alternating (A, B, A,
B, ...) so a shared machine's load hits both alike; medians of `--repeats`. `generate` also runs the
generator, quantizes, measures each kept row's nearest-training distance and writes Parquet; the gap is
what all that costs on top of the classifier. Run: `python benchmarks/generate_overhead.py --classifier
C.safetensors --generator G.safetensors [--rows 20000]`.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from ccc_ray.classifiers.training import predict_logits
from ccc_ray.classifiers.weights import load_classifier
from ccc_ray.counterfeits.generate import generate_counterfeits
from ccc_ray.data.sources import DataConfig, load_dataset
from ccc_ray.methods.generator_file import load_generator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classifier", required=True)
    parser.add_argument("--generator", required=True)
    parser.add_argument("--rows", type=int, default=20_000, help="samples per timed run")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dataset = load_dataset(DataConfig())
    classifier, info = load_classifier(args.classifier, dataset.image_shape, dataset.num_classes)
    classifier.eval().requires_grad_(False)
    method, _ = load_generator(args.generator, "cpu", classifier)
    per_class = args.rows // dataset.num_classes
    images = torch.rand(per_class * dataset.num_classes, *dataset.image_shape)

    def forward() -> float:
        start = time.perf_counter()
        with torch.no_grad():
            predict_logits(classifier, images, "cpu", args.batch_size)
        return time.perf_counter() - start

    def generate() -> float:
        with tempfile.TemporaryDirectory() as folder:
            start = time.perf_counter()
            generate_counterfeits(method, classifier, info.sha256, dataset, store_dir=folder, run_id="bench",
                                  per_class=per_class, confidence_bar=0.0 + 1e-9, seed=1,
                                  batch_size=args.batch_size, run_metadata={}, progress=False)
            return time.perf_counter() - start

    forward(), generate()  # warm-up: first-call allocations and lazy imports
    forwards, generates = [], []
    for _ in range(args.repeats):
        forwards.append(forward())
        generates.append(generate())
    rows = len(images)
    f, g = statistics.median(forwards), statistics.median(generates)
    print(f"rows {rows}, batch {args.batch_size}, threads {args.threads}, repeats {args.repeats}")
    print(f"classifier forward: {rows / f:,.0f} images/s (median {f:.3f} s, runs {[round(x, 3) for x in forwards]})")
    print(f"generate (all rows kept): {rows / g:,.0f} rows/s (median {g:.3f} s, runs {[round(x, 3) for x in generates]})")
    print(f"generate / forward time: {g / f:.2f}x  (goal: within 2x)")


if __name__ == "__main__":
    main()
