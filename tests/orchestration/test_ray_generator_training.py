"""Generator training under Ray Train: 2 workers reach the quality of 1, and a killed run resumes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ccc_ray.job import load_job
from ccc_ray.job import JobConfig
from ccc_ray.orchestration.generation import generate_from_file
from ccc_ray.orchestration.stages import train_generator_stage

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def job(tmp_path: Path, run_id: str, classifier_file: Path, **overrides) -> JobConfig:
    settings = {"run.output_dir": str(tmp_path), "run.run_id": run_id, "run.classifier_path": str(classifier_file),
                "inversion.steps": 500, "inversion.batch_size": 128, "run.checkpoint_every": 100,
                "generate.per_class": 30, "keep.confidence_bar": 0.9}
    settings.update(overrides)
    return load_job(None, settings)


def test_two_workers_train_to_the_quality_of_one(ray_cluster, tmp_path, digits_classifier_file):
    reports = {}
    for workers in (1, 2):
        config = job(tmp_path, f"w{workers}", digits_classifier_file, **{"run.num_workers": workers})
        result = train_generator_stage(config)
        assert result["steps"] == 500
        reports[workers] = generate_from_file(config, progress=False)
    one, two = reports[1], reports[2]
    print({w: (r.kept_share, r.distance_ratio, min(r.diversity_ratio_per_class.values())) for w, r in reports.items()})
    # A short run against a briefly trained classifier: the point is that 2 workers match 1, not the level.
    assert one.kept_share >= 0.8 and two.kept_share >= 0.8
    assert abs(one.kept_share - two.kept_share) <= 0.1
    assert two.distance_ratio >= 0.8 * one.distance_ratio
    assert min(two.diversity_ratio_per_class.values()) >= 0.8 * min(one.diversity_ratio_per_class.values())


def test_killed_run_resumes_from_its_last_checkpoint(tmp_path, digits_classifier_file, sessions):
    args = [sys.executable, str(REPO / "jobs" / "train_generator.py"), "--run.output_dir", str(tmp_path),
            "--run.run_id", "killed", "--run.classifier_path", str(digits_classifier_file),
            "--inversion.steps", "400", "--inversion.batch_size", "64", "--run.checkpoint_every", "40"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    storage = tmp_path / "killed" / "ray" / "killed-generator-inversion"
    first = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                             start_new_session=True)
    deadline = time.monotonic() + 240
    try:
        # A checkpoint counts once the controller has recorded it in the run's snapshot.
        snapshot = storage / "checkpoint_manager_snapshot.json"
        while time.monotonic() < deadline and not (snapshot.is_file() and "checkpoint_" in snapshot.read_text()):
            assert first.poll() is None, first.stdout.read()
            time.sleep(0.2)
        assert snapshot.is_file(), "no checkpoint within the deadline"
    finally:
        sessions.kill(first.pid)  # driver, its local Ray and the Train workers: no graceful shutdown
        first.wait()
    assert not (tmp_path / "killed" / "generator-inversion.safetensors").exists()

    second = subprocess.run(args, capture_output=True, text=True, env=env, timeout=400)
    output = second.stdout + second.stderr
    assert second.returncode == 0, output
    resumed = [line for line in output.splitlines() if "resumed from the checkpoint at step" in line]
    assert resumed, output
    step = int(resumed[0].rsplit(" ", 1)[1])
    assert 40 <= step < 400 and step % 40 == 0
    assert "step 40/400 " not in output.split(resumed[0], 1)[1]  # nothing before the checkpoint was redone
    assert (tmp_path / "killed" / "generator-inversion.safetensors").is_file()
