"""Peak memory of the classifier-training driver and of its Train worker against the size of a Parquet image
source (issue 16, item 2: the training data reaches the workers as Ray Dataset shards).

    python benchmarks/train_data_memory.py --rows 5000,20000,40000 [--before /path/to/old/checkout]

Builds (once, in --work) one Parquet image store per size: random 3x32x32 images (CIFAR's shape: 3 KB a
row stored, 12 KB as float32), 10 classes, files of 10,000 rows in row groups of 1,000 (as `generate`
writes them). Each run is `train_classifier` (`data.name parquet`, 1 worker, 1 epoch, batch 256, a
linear classifier from --work so that the run measures the data path rather than convolutions) in a
fresh Python process, which
reports its own peak resident memory (`ru_maxrss`: the driver) and, sampled every 0.1 s from
/proc/<pid>/status (VmHWM, the kernel's high-water mark), the peak of every process it started (its
own Ray cluster: the Train worker, Ray Data's read tasks, raylet, ...), the largest of them and the
Train worker's. 20% of each store is the test split, held by rank 0 for its per-epoch accuracy.

`--before DIR` also runs the same training with `PYTHONPATH=DIR` (older code, where the driver and every
worker loaded the whole source), interleaved with this checkout's runs on the same stores.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import threading
import time
from pathlib import Path

from measured_process import run_measurement, write_synthetic_store  # benchmarks/, beside this file

ROOT = Path(__file__).resolve().parent.parent
FILE_ROWS, GROUP_ROWS, SIDE, CHANNELS = 10_000, 1_000, 32, 3
LINEAR = '''import torch


def linear(image_shape, num_classes):
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(image_shape[0] * image_shape[1] * image_shape[2], num_classes))
'''


def build(work: Path, sizes: list[int]) -> None:
    for rows in sizes:
        folder = work / f"images-{rows}"
        if not folder.is_dir():
            write_synthetic_store(folder, rows, (SIDE, SIDE, CHANNELS), "images", "images",
                                  [str(k) for k in range(10)], {"benchmark": "train_data_memory"},
                                  lambda rng, start, n: rng.integers(0, 10, n), 0.99, 0.0, FILE_ROWS, GROUP_ROWS)


def descendants(root: int) -> dict[int, str]:
    """pid -> command line of every live process below `root`."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    parents[int(entry)] = int(handle.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                pass
    found, frontier = {}, [root]
    while frontier:
        pid = frontier.pop()
        for child, parent in parents.items():
            if parent == pid and child not in found:
                try:
                    with open(f"/proc/{child}/cmdline", "rb") as handle:
                        found[child] = handle.read().replace(b"\0", b" ").decode(errors="replace")[:120]
                except OSError:
                    continue
                frontier.append(child)
    return found


def high_water_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def measure(root: str, output_dir: str) -> dict:
    """One classifier training in this process; the peaks of this process and of those it started."""
    from ccc_ray.job import load_job
    from ccc_ray.orchestration.train_classifier import train_classifier

    peaks: dict[int, tuple[float, str]] = {}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            for pid, command in descendants(os.getpid()).items():
                mark = high_water_mb(pid)
                if mark is not None and mark > peaks.get(pid, (0.0, ""))[0]:
                    peaks[pid] = (mark, command)
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    job = load_job(None, {"run.output_dir": output_dir, "run.run_id": "memory", "data.name": "parquet",
                          "data.root": root, "classifier.epochs": 1, "classifier.batch_size": 256,
                          "classifier.arch": "memory_linear:linear"})
    started = time.perf_counter()
    _, metrics = train_classifier(job)
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    workers = [mark for mark, command in peaks.values() if "TrainWorker" in command]
    largest = max(peaks.values(), default=(0.0, ""))
    return {"driver_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "train_worker_peak_mb": max(workers, default=float("nan")),
            "largest_child_peak_mb": largest[0], "largest_child": largest[1].split(" ")[0],
            "seconds": seconds, "test_accuracy": metrics.get("test_accuracy")}


def run_one(pythonpath: str, work: Path, store: Path, output_dir: Path) -> dict:
    # the code measured, and the linear model
    return run_measurement(__file__, f"{pythonpath}:{work}", ["--measure", str(store), "--output-dir", str(output_dir)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="5000,20000,40000")
    parser.add_argument("--work", default="/tmp/ccc-train-data-memory")
    parser.add_argument("--before", default=None, help="a checkout of older code, measured side by side")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--measure", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--output-dir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.output_dir)), flush=True)
        return
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    sizes = [int(n) for n in args.rows.split(",")]
    build(work, sizes)
    (work / "memory_linear.py").write_text(LINEAR)
    codes = {"this": str(ROOT)} | ({"before": str(Path(args.before).resolve())} if args.before else {})
    results: dict[tuple[str, int], list[dict]] = {}
    for repeat in range(args.repeats):
        for rows in sizes:
            for code, path in codes.items():
                result = run_one(path, work, work / f"images-{rows}", work / f"run-{code}-{rows}-{repeat}")
                results.setdefault((code, rows), []).append(result)
                print(json.dumps({"code": code, "rows": rows, "repeat": repeat, **result}), flush=True)
    for (code, rows), runs in results.items():
        def median(key: str) -> float:
            return statistics.median(r[key] for r in runs)
        print(f"{code:6s} {rows:>7,} rows: driver {median('driver_peak_mb'):6.0f} MB, Train worker "
              f"{median('train_worker_peak_mb'):6.0f} MB, largest child {median('largest_child_peak_mb'):6.0f} MB, "
              f"{median('seconds'):5.0f} s", flush=True)


if __name__ == "__main__":
    main()
