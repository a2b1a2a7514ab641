"""Load: `generate` streams counterfeits to Parquet with bounded memory; peak RSS and write rate vs plain pyarrow.

    python benchmarks/store_load.py [--rows 10000,100000] [--image-shape 3,32,32] [--batch-size 1000] [--json]

Each measurement runs in a fresh Python process, so its peak RSS (getrusage ru_maxrss) is its own:

- `generate`: the real `ccc_ray.counterfeits.generate.generate_counterfeits` (quantize to uint8, re-score with the
  classifier, the keep rule, nearest-train distance, lineage columns, streaming atomic write), fed by
  stand-ins so that only the streaming is measured: a method whose `sample()` returns uniform random
  images (seeded per batch), a linear classifier with zero weights (every image scores 1/K, so every row
  is kept at confidence bar 0.05) and a data set of 50 random training images. A load test, not a quality
  test.
- `store`: the same arrays written through `counterfeit_batch` + `CounterfeitWriter` only (the store's own
  overhead: row ids, lineage columns, the hidden temporary and the rename).
- `pyarrow`: the same record batches written with a plain `pyarrow.parquet.ParquetWriter` (zstd, as the
  store), timing only `write_batch` and `close`.

Images default to 3 x 32 x 32 (CIFAR-10 size, 3,072 bytes each) so that 100,000 rows are 307 MB of pixels:
if anything held every row, peak RSS would grow by that much between 10,000 and 100,000 rows. Random
pixels do not compress, so the file is as large as the pixels.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

NUM_CLASSES = 10
SEED = 1
CONFIDENCE_BAR = 0.05


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


class RandomImages:
    """Stand-in method: uniform random images in [0, 1], N x C x H x W, the same for the same seed."""

    name = "random"

    def __init__(self, image_shape: tuple[int, int, int]):
        self.image_shape = image_shape

    def sample(self, targets, seed: int):
        import torch

        return torch.rand(len(targets), *self.image_shape, generator=torch.Generator().manual_seed(seed))

    def sample_with_lineage(self, targets, seed: int, dataset=None):
        """What `generate` calls: the images, with no source ids or masks (as a method that starts from nothing)."""
        from ccc_ray.methods import Sampled

        return Sampled(self.sample(targets, seed))


def stand_ins(image_shape: tuple[int, int, int]):
    import torch

    from ccc_ray.data.dataset import ImageDataset

    generator = torch.Generator().manual_seed(0)
    images = torch.rand(100, *image_shape, generator=generator)
    labels = torch.arange(100) % NUM_CLASSES
    dataset = ImageDataset("stand-in", images[:50], labels[:50], images[50:], labels[50:],
                           [str(k) for k in range(NUM_CLASSES)])
    classifier = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(int(np.prod(image_shape)), NUM_CLASSES))
    torch.nn.init.zeros_(classifier[1].weight)
    torch.nn.init.zeros_(classifier[1].bias)
    return RandomImages(image_shape), classifier.requires_grad_(False).eval(), dataset


def batches(rows: int, batch_size: int, image_shape: tuple[int, int, int]):
    """The record batches `generate` writes, rebuilt from the same seeds (untimed in the callers)."""
    import torch

    from ccc_ray.counterfeits.quality import quantize
    from ccc_ray.store import counterfeit_batch

    method = RandomImages(image_shape)
    targets_all = torch.arange(NUM_CLASSES).repeat_interleave(rows // NUM_CLASSES)
    for chunk, start in enumerate(range(0, len(targets_all), batch_size)):
        targets = targets_all[start:start + batch_size]
        stored = quantize(method.sample(targets, SEED * 100_003 + chunk)).permute(0, 2, 3, 1).numpy()
        n = len(targets)
        yield stored, targets.numpy(), lambda stored=stored, targets=targets, start=start, n=n: counterfeit_batch(
            stored, targets.numpy(), np.zeros(n, np.int64), np.full(n, 1 / NUM_CLASSES, np.float32),
            np.zeros(n, np.float32), np.arange(start, start + n), run_id="load", method="random",
            classifier_sha256="0" * 64, seed=SEED)


def child(mode: str, rows: int, batch_size: int, image_shape: tuple[int, int, int], out: Path) -> dict:
    """One measurement in this process; returns its figures."""
    import pyarrow.parquet as pq
    import torch

    from ccc_ray.store import CounterfeitWriter
    from ccc_ray.store.schema import COUNTERFEIT_SCHEMA

    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    baseline = peak_rss_mb()
    if mode == "generate":
        from ccc_ray.counterfeits.generate import generate_counterfeits

        method, classifier, dataset = stand_ins(image_shape)
        baseline = peak_rss_mb()
        started = time.perf_counter()
        report = generate_counterfeits(method, classifier, "0" * 64, dataset, store_dir=out, run_id="load",
                                       per_class=rows // NUM_CLASSES, confidence_bar=CONFIDENCE_BAR, seed=SEED,
                                       batch_size=batch_size, run_metadata={"benchmark": "store_load"},
                                       progress=False)
        seconds = time.perf_counter() - started
        path, written = Path(report.store_file), report.kept
    elif mode == "store":
        seconds = 0.0
        started = time.perf_counter()
        writer = CounterfeitWriter(out, "random", "load", {"benchmark": "store_load"},
                                   [str(k) for k in range(NUM_CLASSES)])
        seconds += time.perf_counter() - started
        for _, _, build in batches(rows, batch_size, image_shape):
            started = time.perf_counter()
            writer.write(build())  # row ids and lineage columns are the store's work: timed
            seconds += time.perf_counter() - started
        started = time.perf_counter()
        writer.commit()  # close, fsync, rename
        seconds += time.perf_counter() - started
        path, written = Path(writer.path), writer.rows
    elif mode == "pyarrow":
        path = out / "plain.parquet"
        seconds, written = 0.0, 0
        writer = pq.ParquetWriter(path, COUNTERFEIT_SCHEMA, compression="zstd")
        for _, _, build in batches(rows, batch_size, image_shape):
            batch = build()
            started = time.perf_counter()
            writer.write_batch(batch)
            seconds += time.perf_counter() - started
            written += batch.num_rows
        started = time.perf_counter()
        writer.close()
        seconds += time.perf_counter() - started
    else:
        raise ValueError(f"unknown mode {mode!r}")
    result = {"mode": mode, "rows": written, "seconds": seconds, "rows_per_s": written / seconds,
              "pixel_mb_per_s": written * int(np.prod(image_shape)) / seconds / 2**20,
              "baseline_rss_mb": baseline, "peak_rss_mb": peak_rss_mb(),
              "file_mb": path.stat().st_size / 2**20, "file_rows": pq.ParquetFile(path).metadata.num_rows}
    shutil.rmtree(out, ignore_errors=True)
    return result


def measure(mode: str, rows: int, batch_size: int, image_shape: str) -> dict:
    """Run `child` in a fresh interpreter and return its JSON line."""
    with tempfile.TemporaryDirectory(prefix="ccc-load-") as folder:
        command = [sys.executable, __file__, "--child", mode, "--rows", str(rows), "--batch-size", str(batch_size),
                   "--image-shape", image_shape, "--out", str(Path(folder) / "store")]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{mode} {rows} failed:\n{done.stdout}\n{done.stderr}")
        return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="10000,100000", help="row counts to measure (default 10000,100000)")
    parser.add_argument("--modes", default="generate,store,pyarrow", help="generate,store,pyarrow")
    parser.add_argument("--image-shape", default="3,32,32", help="C,H,W of the stand-in images (default 3,32,32)")
    parser.add_argument("--batch-size", type=int, default=1000, help="rows per batch, as --generate.batch_size")
    parser.add_argument("--json", action="store_true", help="print one JSON object per measurement only")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    shape = tuple(int(part) for part in args.image_shape.split(","))
    if args.child:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        print(json.dumps(child(args.child, int(args.rows), args.batch_size, shape, Path(args.out))))
        return
    results = []
    for rows in (int(part) for part in args.rows.split(",")):
        for mode in args.modes.split(","):
            result = measure(mode, rows, args.batch_size, args.image_shape)
            results.append(result)
            if args.json:
                print(json.dumps(result), flush=True)
            else:
                print(f"{mode:9s} {result['rows']:>8,} rows  {result['seconds']:7.2f} s  "
                      f"{result['rows_per_s']:>9,.0f} rows/s  {result['pixel_mb_per_s']:6.1f} MB/s pixels  "
                      f"peak RSS {result['peak_rss_mb']:6.0f} MB (at start {result['baseline_rss_mb']:.0f} MB)  "
                      f"file {result['file_mb']:.0f} MB", flush=True)
    if args.json:
        return
    by = {(r["mode"], r["rows"]): r for r in results}
    for rows in sorted({r["rows"] for r in results}):
        plain = by.get(("pyarrow", rows))
        for mode in ("generate", "store"):
            if plain and (mode, rows) in by:
                print(f"{rows:,} rows: {mode} / plain pyarrow write rate = "
                      f"{by[(mode, rows)]['rows_per_s'] / plain['rows_per_s']:.3f}")
    sizes = sorted({r["rows"] for r in results})
    if len(sizes) > 1:
        for mode in args.modes.split(","):
            low, high = by.get((mode, sizes[0])), by.get((mode, sizes[-1]))
            if low and high:
                print(f"{mode}: peak RSS {low['peak_rss_mb']:.0f} MB at {sizes[0]:,} rows, "
                      f"{high['peak_rss_mb']:.0f} MB at {sizes[-1]:,} rows "
                      f"({high['peak_rss_mb'] - low['peak_rss_mb']:+.0f} MB)")


if __name__ == "__main__":
    main()
