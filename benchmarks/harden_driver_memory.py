"""Peak driver memory of the hardening stage against the size of the counterfeit pool (issue 16, item 2).

    python benchmarks/harden_driver_memory.py --counts 10000,100000 [--before /path/to/old/checkout]

Builds (once, in --work) a digits classifier and, per count, a synthetic pooled store of that many 8x8
counterfeits (random pixels, files of 10,000 rows in row groups of 1,000 as `generate` writes them), then
runs the hardening stage (`harden_classifier`: the driver's checks, Ray Train with 1 worker, 1 epoch of
the default mode, the hardened classifier written) in a fresh Python process per run and reports that
process's peak resident memory (`ru_maxrss`, the driver only: Ray's workers and raylet are other
processes) and its resident memory after the imports, before the stage.

`--before DIR` also runs the same stage with `PYTHONPATH=DIR` (a checkout of older code), interleaved
with this checkout's runs, so both are measured side by side on the same stores. `--repeats N` runs each
(count, code) N times; the figure is the median.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import time
from pathlib import Path

from measured_process import run_measurement, write_synthetic_store  # benchmarks/, beside this file

ROOT = Path(__file__).resolve().parent.parent
FILE_ROWS, GROUP_ROWS = 10_000, 1_000


def rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def build(work: Path, counts: list[int]) -> Path:
    """The classifier file and one store folder per count (skipped when already there)."""
    import numpy as np
    import torch

    from ccc_ray.classifiers.build import ClassifierConfig, build_classifier
    from ccc_ray.classifiers.training import train_epoch
    from ccc_ray.classifiers.weights import save_classifier
    from ccc_ray.data.sources import DataConfig, load_dataset

    dataset = load_dataset(DataConfig())
    classifier = work / "classifier.safetensors"
    if not classifier.is_file():
        torch.manual_seed(0)
        config = ClassifierConfig(epochs=3)
        model = build_classifier(config, dataset.image_shape, dataset.num_classes)
        optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(dataset.train_images, dataset.train_labels),
                                             batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0))
        for _ in range(config.epochs):
            train_epoch(model, loader, optimizer, torch.device("cpu"), 1, torch.Generator().manual_seed(1))
        save_classifier(classifier, model, config, dataset.image_shape, list(dataset.class_names), "digits")
    for count in counts:
        folder = work / f"pool-{count}"
        if not folder.is_dir():
            write_synthetic_store(folder, count, (8, 8, 1), "inversion", "synthetic", list(dataset.class_names),
                                  {"benchmark": "harden_driver_memory"},
                                  lambda rng, start, n: (np.arange(start, start + n) % 10).astype(np.int64),
                                  0.995, 3.0, FILE_ROWS, GROUP_ROWS)
    return classifier


def measure(store: str, classifier: str, output_dir: str) -> dict:
    """One hardening stage in this process; its peak memory."""
    from ccc_ray.job import load_job
    from ccc_ray.orchestration.harden_classifier import harden_classifier

    before = rss_mb()
    job = load_job(None, {"run.output_dir": output_dir, "run.run_id": "memory", "harden.epochs": 1})
    started = time.perf_counter()
    _, metrics = harden_classifier(job, Path(classifier), [store], Path(output_dir) / "hardened.safetensors",
                                   "memory-harden")
    return {"rss_before_mb": before, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "seconds": time.perf_counter() - started, "epoch": metrics.get("epoch")}


def run_one(pythonpath: str, store: Path, classifier: Path, output_dir: Path) -> dict:
    return run_measurement(__file__, pythonpath, ["--measure", str(store), "--classifier", str(classifier),
                                                  "--output-dir", str(output_dir)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="10000,100000")
    parser.add_argument("--work", default="/tmp/ccc-harden-memory")
    parser.add_argument("--before", default=None, help="a checkout of older code, measured side by side")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--measure", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--classifier", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--output-dir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.classifier, args.output_dir)), flush=True)
        return
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    counts = [int(c) for c in args.counts.split(",")]
    classifier = build(work, counts)
    codes = {"this": str(ROOT)} | ({"before": str(Path(args.before).resolve())} if args.before else {})
    results: dict[tuple[str, int], list[dict]] = {}
    for repeat in range(args.repeats):
        for count in counts:
            for code, path in codes.items():
                output = work / f"run-{code}-{count}-{repeat}"
                result = run_one(path, work / f"pool-{count}", classifier, output)
                results.setdefault((code, count), []).append(result)
                print(json.dumps({"code": code, "count": count, "repeat": repeat, **result}), flush=True)
    for (code, count), runs in results.items():
        peak = statistics.median(r["peak_rss_mb"] for r in runs)
        start = statistics.median(r["rss_before_mb"] for r in runs)
        print(f"{code:6s} {count:>7,} counterfeits: peak driver RSS {peak:7.0f} MB (after imports {start:5.0f} MB, "
              f"stage adds {peak - start:6.0f} MB), {statistics.median(r['seconds'] for r in runs):5.0f} s", flush=True)


if __name__ == "__main__":
    main()
