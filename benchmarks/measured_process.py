"""One measurement in a fresh process, shared by the memory benchmarks: peak memory is per process, so each
measurement runs alone in its own, under the code it measures (`PYTHONPATH`), and prints one JSON line."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def run_measurement(script: str, pythonpath: str, arguments: list[str]) -> dict:
    """`python script --measure ...` with `pythonpath` first on the import path; its last JSON line."""
    env = {**os.environ, "PYTHONPATH": pythonpath}
    # cwd too: Ray's workers put the driver's working folder first on their import path
    done = subprocess.run([sys.executable, script, *arguments], env=env, cwd=pythonpath.split(os.pathsep)[0],
                          capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        raise SystemExit(f"measurement failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return json.loads(lines[-1])


def write_synthetic_store(folder, rows: int, image_shape: tuple[int, int, int], method: str, run_prefix: str,
                          class_names: list[str], metadata: dict, targets_of, confidence: float, distance: float,
                          file_rows: int = 10_000, group_rows: int = 1_000) -> None:
    """A store of `rows` random-pixel counterfeits (HWC uint8 `image_shape`) in files of `file_rows` rows
    (run ids `run_prefix000`, ...) and row groups of `group_rows`, as `generate` writes them: the memory
    benchmarks' stand-in pools. `targets_of(rng, start, n)` gives each group's targets (drawn before its
    pixels); the random stream is seeded by `rows`, so a size always gives the same store."""
    import numpy as np

    from ccc_ray.store import CounterfeitWriter, counterfeit_batch

    rng = np.random.default_rng(rows)
    for file_index, first in enumerate(range(0, rows, file_rows)):
        run_id = f"{run_prefix}{file_index:03d}"
        count = min(file_rows, rows - first)
        with CounterfeitWriter(folder, method, run_id, metadata, class_names) as writer:
            for start in range(0, count, group_rows):
                n = min(group_rows, count - start)
                targets = targets_of(rng, start, n)
                writer.write(counterfeit_batch(
                    rng.integers(0, 256, size=(n, *image_shape), dtype=np.uint8), targets, targets,
                    np.full(n, confidence, np.float32), np.full(n, distance, np.float32),
                    np.arange(start, start + n), run_id=run_id, method=method, classifier_sha256="ab" * 32,
                    seed=file_index))
