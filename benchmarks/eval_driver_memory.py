"""Peak driver memory of hardening's evaluation against the number of held-out counterfeits (issue 16, item 2).

    python benchmarks/eval_driver_memory.py --counts 10000,100000 [--before /path/to/old/checkout]

Builds (once, in --work) a digits classifier and, per count, a synthetic store of that many 8x8
counterfeits (`benchmarks/harden_driver_memory.py`'s stores: random pixels, files of 10,000 rows in row
groups of 1,000), then evaluates the classifier on it in a fresh Python process per run, as one round of
`run_hardening` does (the test set, the held-out counterfeits split off by row id, two real OOD sets of
500 images), and reports that process's peak resident memory (`ru_maxrss`: the driver only; Ray's actors
and raylet are other processes), its resident memory after the imports, and the held-out AUROC (the same
figure either way). `--eval-fraction` (default 0.99) sets the share of the store held out, so the held-out
set is about the store's size.

Modes: `driver` reads the held-out rows into the driver and scores them there (`held_out_split` +
`evaluate_classifier`: what `run_hardening` did before evaluation moved to Ray Data; it runs on any
checkout); `ray` scores them on Ray Data (`evaluate_on_pool` with `--harden.eval_actors 1`). `--before DIR`
runs the `driver` mode with `PYTHONPATH=DIR` (a checkout of the code before), interleaved with this
checkout's `ray` runs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

from measured_process import run_measurement  # benchmarks/, beside this file

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))


def rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure(store: str, classifier: str, mode: str, eval_fraction: float) -> dict:
    """One evaluation in this process; its peak memory and the held-out AUROC."""
    from ccc_ray.classifiers.weights import load_classifier
    from ccc_ray.data.sources import load_dataset
    from ccc_ray.job import load_job

    if mode == "ray":
        from ccc_ray.orchestration.evaluation import evaluate_on_pool  # noqa: F401 (imports counted as before)
    else:
        from ccc_ray.data.real_ood import real_ood_images
        from ccc_ray.evaluate import evaluate_classifier
        from ccc_ray.hardening.pool import held_out_split
    before = rss_mb()
    started = time.perf_counter()
    actors = {"harden.eval_actors": 1} if mode == "ray" else {}  # a setting the code before does not have
    job = load_job(None, {"harden.eval_fraction": eval_fraction, **actors})
    dataset = load_dataset(job.data)
    model, _ = load_classifier(classifier, dataset.image_shape, dataset.num_classes)
    cfg = job.harden
    if mode == "ray":
        from ccc_ray.hardening.pool import scan_pool

        scan = scan_pool([store], dataset.image_shape, dataset.num_classes, cfg.eval_fraction, cfg.split_seed)
        evaluation = evaluate_on_pool(job, dataset, model, Path(classifier), False, scan, "cpu")
        held_out = scan.eval_rows
    else:
        split = held_out_split([store], dataset.image_shape, dataset.num_classes, cfg.eval_fraction, cfg.split_seed)
        sets = {"counterfeits_held_out": split.eval_images,
                **real_ood_images(dataset.image_shape, cfg.real_ood_per_set, cfg.seed)}
        evaluation = evaluate_classifier(model, False, dataset.test_images, dataset.test_labels, sets, cfg.score)
        held_out = len(split.eval_ids)
    return {"rss_before_mb": before, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "seconds": time.perf_counter() - started, "held_out": held_out,
            "auroc": evaluation.metrics["counterfeits_held_out"]["max_softmax"]["auroc"]}


def run_one(pythonpath: str, store: Path, classifier: Path, mode: str, eval_fraction: float) -> dict:
    return run_measurement(__file__, pythonpath, ["--measure", str(store), "--classifier", str(classifier),
                                                  "--mode", mode, "--eval-fraction", str(eval_fraction)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="10000,100000")
    parser.add_argument("--work", default="/tmp/ccc-eval-memory")
    parser.add_argument("--before", default=None, help="a checkout of older code: its driver-side evaluation")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--eval-fraction", type=float, default=0.99)
    parser.add_argument("--measure", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--classifier", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="ray", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.classifier, args.mode, args.eval_fraction)), flush=True)
        return
    from harden_driver_memory import build

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    counts = [int(c) for c in args.counts.split(",")]
    classifier = build(work, counts)
    runs = [("ray", str(ROOT), "ray")] + ([("before", str(Path(args.before).resolve()), "driver")] if args.before
                                          else [("driver", str(ROOT), "driver")])
    results: dict[tuple[str, int], list[dict]] = {}
    for repeat in range(args.repeats):
        for count in counts:
            for label, path, mode in runs:
                result = run_one(path, work / f"pool-{count}", classifier, mode, args.eval_fraction)
                results.setdefault((label, count), []).append(result)
                print(json.dumps({"code": label, "count": count, "repeat": repeat, **result}), flush=True)
    for (label, count), measured in results.items():
        peak = statistics.median(r["peak_rss_mb"] for r in measured)
        start = statistics.median(r["rss_before_mb"] for r in measured)
        print(f"{label:6s} {count:>7,} rows ({measured[0]['held_out']:,} held out): peak driver RSS {peak:7.0f} MB "
              f"(after imports {start:5.0f} MB, evaluation adds {peak - start:6.0f} MB), "
              f"{statistics.median(r['seconds'] for r in measured):5.0f} s, AUROC {measured[0]['auroc']:.6f}",
              flush=True)


if __name__ == "__main__":
    main()
