"""`generate` killed with SIGKILL mid-write: no partial Parquet file is ever visible, and re-running the
same run id writes exactly the rows of an uninterrupted run: none lost, none duplicated."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from ccc_ray.job import load_job
from ccc_ray.errors import CccError
from ccc_ray.orchestration.generation import generate_from_file
from ccc_ray.store import read_store

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
SETTINGS = {"run.run_id": "kill", "generate.per_class": "300", "generate.batch_size": "100",
            "keep.confidence_bar": "0.05"}


def generate_args(output_dir: Path, classifier: Path, generator: Path) -> list[str]:
    flags = {**SETTINGS, "run.output_dir": str(output_dir), "run.classifier_path": str(classifier),
             "run.generator_path": str(generator)}
    return [sys.executable, str(REPO / "jobs" / "generate.py"), *[part for key, value in flags.items()
                                                                   for part in (f"--{key}", value)]]


def kill_mid_write(args: list[str], store: Path, sessions) -> Path:
    """Start generate, SIGKILL it once its hidden temporary holds at least one row group; returns the temporary."""
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    sessions.track(process.pid)
    deadline = time.monotonic() + 120
    temporary = None
    while time.monotonic() < deadline and temporary is None:
        assert process.poll() is None, f"generate ended before it could be killed:\n{process.stdout.read()}"
        # 4 bytes of "PAR1" at open; a written row group makes it larger.
        temporary = next((p for p in store.glob(".*.tmp") if p.stat().st_size > 1024), None) if store.is_dir() else None
        time.sleep(0.01)
    assert temporary is not None, "no row group was written within the deadline"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    return temporary


def visible_rows(store: Path) -> int:
    """Rows a pyarrow dataset (what pandas and Ray Data use) sees in the folder; hidden files are skipped."""
    return ds.dataset(store, format="parquet").count_rows() if store.is_dir() else 0


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_killed_generate_leaves_no_partial_file_and_rerun_neither_loses_nor_duplicates(
        tmp_path, digits_classifier_file, digits_generator_file, sessions):
    args = generate_args(tmp_path, digits_classifier_file, digits_generator_file)
    store = tmp_path / "kill" / "counterfeits"
    final = store / "inversion-kill.parquet"

    # 1. Killed on a fresh store: nothing is visible, only a hidden temporary is left.
    stale = kill_mid_write(args, store, sessions)
    assert not final.exists()
    assert [p.name for p in store.glob("*.parquet")] == []
    assert visible_rows(store) == 0
    with pytest.raises(CccError, match="holds no .parquet files"):
        read_store(store)

    # 2. The same command again completes; the dead writer's temporary is cleaned up.
    rerun = subprocess.run(args, capture_output=True, text=True, timeout=300, check=False)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    assert not stale.exists() and list(store.glob(".*.tmp")) == []
    table = read_store(store)
    ids = table["id"].to_pylist()
    assert len(ids) == len(set(ids)) > 0  # no duplicates

    # An uninterrupted run of the same settings elsewhere gives exactly the same rows: none lost.
    reference_job = load_job(None, {
        **SETTINGS, "run.output_dir": str(tmp_path / "reference"), "run.classifier_path": str(digits_classifier_file),
        "run.generator_path": str(digits_generator_file)})
    reference = read_store(generate_from_file(reference_job, progress=False).store_file)
    assert sorted(ids) == sorted(reference["id"].to_pylist())
    assert table.sort_by("id")["image"].equals(reference.sort_by("id")["image"])
    assert visible_rows(store) == table.num_rows

    # 3. Killed while rewriting that run id: readers keep seeing the complete earlier file, byte for byte.
    before = digest(final)
    kill_mid_write(args, store, sessions)
    assert digest(final) == before
    assert [p.name for p in store.glob("*.parquet")] == [final.name]
    assert visible_rows(store) == table.num_rows
    assert read_store(store)["id"].to_pylist() == ids
