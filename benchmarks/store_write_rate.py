"""The store's write rate against a plain pyarrow write of the same arrays (issue 16, item 6).

    python benchmarks/store_write_rate.py [--cases digits,cifar] [--repeats 9] [--json]

For each case, the same rows are written two ways, interleaved, `--repeats` times; the figure is the
median time of each and their ratio (store rows/s divided by plain rows/s; 1.0 means no overhead):

- `store`: what a job does, timed whole: `counterfeit_batch` from the NumPy arrays (row ids, lineage
  columns) for every batch, `CounterfeitWriter` (hidden temporary, zstd where it pays, fsync, atomic
  rename).
- `plain`: `pyarrow.parquet.write_table` (zstd, pyarrow's other defaults) of a table holding exactly the
  columns the store writes, built beforehand and not timed (ids included), with the same row groups.
- `plain+fsync` (for reading the result, not a target): the plain write followed by `os.fsync` of the
  file, the durability the store's atomic commit needs before its rename;
- `plain+settings` (likewise): the plain write with the store's encoding settings (`parquet_settings`
  of the first batch, where the store has it), to show how much of the difference is the encoding
  choice and how much the store's own work.

Wall time is the figure. The development machine is shared, so the script also gives the median of
the ratios of adjacent (store, plain) pairs and the ratio of process CPU times, which contention
disturbs less (CPU time leaves out the fsync's wait for the disk).

Cases (rows, image shape, batch size):
- `digits`: 50,000 8x8x1 images, one batch: the scikit-learn digits scaled to 0-255 with +-8 noise per
  pixel (fresh values per row, as a generator makes; real digits compress, random pixels would not);
- `digits-batched`: the same in batches of 1,000 rows, as `generate` writes them (one row group each);
- `cifar`: 10,000 32x32x3 uniform random images (incompressible), one batch;
- `cifar-batched`: the same in batches of 1,000.

Which `ccc_ray` is measured is the one Python imports (printed first): run it with `PYTHONPATH` set to
an older checkout to measure that code with the same script.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

try:
    import ccc_ray
except ImportError:  # run from a checkout without an install
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import ccc_ray

CASES = {  # name: (rows, height, width, channels, batch size)
    "digits": (50_000, 8, 8, 1, 50_000),
    "digits-batched": (50_000, 8, 8, 1, 1_000),
    "cifar": (10_000, 32, 32, 3, 10_000),
    "cifar-batched": (10_000, 32, 32, 3, 1_000),
}
RUN_ID, METHOD, SEED, SHA = "bench", "inversion", 7, "0" * 64


def make_rows(rows: int, height: int, width: int, channels: int) -> dict[str, np.ndarray]:
    """The per-row arrays a job hands to the store, seeded."""
    rng = np.random.default_rng(0)
    if (height, width, channels) == (8, 8, 1):
        from sklearn.datasets import load_digits

        digits = (load_digits().images * (255 / 16)).round().astype(np.int16)
        noisy = digits[np.arange(rows) % len(digits)] + rng.integers(-8, 9, size=(rows, 8, 8))
        images = np.clip(noisy, 0, 255).astype(np.uint8)[..., None]
    else:
        images = rng.integers(0, 256, size=(rows, height, width, channels), dtype=np.uint8)
    targets = np.arange(rows) % 10
    return {"images": images, "targets": targets, "predicted": targets.copy(),
            "confidence": rng.uniform(0.99, 1.0, rows).astype(np.float32),
            "nearest_train_l2": rng.uniform(1.0, 4.0, rows).astype(np.float32), "sample_index": np.arange(rows)}


def batch_of(arrays: dict[str, np.ndarray], start: int, stop: int):
    from ccc_ray.store import counterfeit_batch

    part = {name: values[start:stop] for name, values in arrays.items()}
    return counterfeit_batch(part["images"], part["targets"], part["predicted"], part["confidence"],
                             part["nearest_train_l2"], part["sample_index"], run_id=RUN_ID, method=METHOD,
                             classifier_sha256=SHA, seed=SEED)


def write_store(arrays: dict[str, np.ndarray], batch_size: int, folder: Path) -> tuple[float, float]:
    """(wall, CPU) seconds of a whole store write of `arrays`."""
    from ccc_ray.store import CounterfeitWriter

    rows = len(arrays["images"])
    started, cpu = time.perf_counter(), time.process_time()
    with CounterfeitWriter(folder, METHOD, RUN_ID, {"benchmark": "store_write_rate"}, [str(k) for k in range(10)]) as w:
        for start in range(0, rows, batch_size):
            w.write(batch_of(arrays, start, min(start + batch_size, rows)))
    return time.perf_counter() - started, time.process_time() - cpu


def write_plain(table, batch_size: int, path: Path, fsync: bool = False, **settings) -> tuple[float, float]:
    """(wall, CPU) seconds of one `pq.write_table` of the prepared table."""
    import pyarrow.parquet as pq

    started, cpu = time.perf_counter(), time.process_time()
    pq.write_table(table, path, row_group_size=batch_size, **{"compression": "zstd", **settings})
    if fsync:
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
    return time.perf_counter() - started, time.process_time() - cpu


def store_settings(arrays: dict[str, np.ndarray], batch_size: int) -> dict:
    """The store writer's encoding settings for these rows, where this version of it has any."""
    from ccc_ray.store import writer

    if hasattr(writer, "parquet_settings"):
        return writer.parquet_settings(batch_of(arrays, 0, min(batch_size, len(arrays["images"]))))
    settings = {}
    if hasattr(writer, "DICTIONARY_COLUMNS"):
        settings["use_dictionary"] = writer.DICTIONARY_COLUMNS
    if hasattr(writer, "STATISTICS_COLUMNS"):
        settings["write_statistics"] = writer.STATISTICS_COLUMNS
    return settings


def measure(case: str, repeats: int) -> dict:
    import pyarrow as pa

    rows, height, width, channels, batch_size = CASES[case]
    arrays = make_rows(rows, height, width, channels)
    table = pa.Table.from_batches([batch_of(arrays, 0, rows)])
    settings = store_settings(arrays, batch_size)
    times = {"store": [], "plain": [], "plain+fsync": [], "plain+settings": []}
    cpu = {mode: [] for mode in times}
    with tempfile.TemporaryDirectory(prefix="ccc-write-rate-") as folder:
        base = Path(folder)
        write_store(arrays, batch_size, base / "warm-up")  # imports, first-call costs
        write_plain(table, batch_size, base / "warm-up.parquet")
        for _ in range(repeats):
            for mode in times:
                gc.collect()
                if mode == "store":
                    seconds, cpu_seconds = write_store(arrays, batch_size, base / "store")
                elif mode == "plain":
                    seconds, cpu_seconds = write_plain(table, batch_size, base / "plain.parquet")
                elif mode == "plain+fsync":
                    seconds, cpu_seconds = write_plain(table, batch_size, base / "plain-fsync.parquet", fsync=True)
                else:
                    seconds, cpu_seconds = write_plain(table, batch_size, base / "plain-settings.parquet",
                                                       **settings)
                times[mode].append(seconds)
                cpu[mode].append(cpu_seconds)
        sizes = {"store_mb": (base / "store" / f"{METHOD}-{RUN_ID}.parquet").stat().st_size / 2**20,
                 "plain_mb": (base / "plain.parquet").stat().st_size / 2**20}
    medians = {mode: statistics.median(values) for mode, values in times.items()}
    return {"case": case, "rows": rows, "image": f"{height}x{width}x{channels}", "batch_size": batch_size,
            "repeats": repeats, **{f"{mode}_s": value for mode, value in medians.items()},
            "store_rows_per_s": rows / medians["store"], "plain_rows_per_s": rows / medians["plain"],
            "ratio": medians["plain"] / medians["store"],
            "ratio_paired_median": statistics.median(p / s for p, s in zip(times["plain"], times["store"])),
            "ratio_cpu": statistics.median(cpu["plain"]) / statistics.median(cpu["store"]),
            "ratio_vs_plain_fsync": medians["plain+fsync"] / medians["store"],
            "ratio_vs_plain_with_store_settings": medians["plain+settings"] / medians["store"], **sizes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    parser.add_argument("--repeats", type=int, default=9, help="timed runs of each mode (default 9)")
    parser.add_argument("--json", action="store_true", help="one JSON object per case only")
    args = parser.parse_args()
    if not args.json:
        print(f"ccc_ray from {Path(ccc_ray.__file__).parent}")
    for case in args.cases.split(","):
        result = measure(case, args.repeats)
        if args.json:
            print(json.dumps(result), flush=True)
            continue
        print(f"{case:15s} {result['rows']:>6,} x {result['image']:7s} batches of {result['batch_size']:>6,}: "
              f"store {result['store_s'] * 1e3:6.1f} ms ({result['store_rows_per_s']:>9,.0f} rows/s)  "
              f"plain {result['plain_s'] * 1e3:6.1f} ms ({result['plain_rows_per_s']:>9,.0f} rows/s)  "
              f"ratio {result['ratio']:.2f} (paired {result['ratio_paired_median']:.2f}, CPU "
              f"{result['ratio_cpu']:.2f}); vs plain+fsync {result['ratio_vs_plain_fsync']:.2f}, vs plain with "
              f"the store's settings {result['ratio_vs_plain_with_store_settings']:.2f}; file "
              f"{result['store_mb']:.1f} MB vs {result['plain_mb']:.1f} MB", flush=True)


if __name__ == "__main__":
    main()
