"""An interrupted search resumes from its storage path without repeating finished trials."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def test_interrupted_search_resumes_without_repeating_finished_trials(tmp_path, digits_classifier_file, sessions):
    args = [sys.executable, str(REPO / "jobs" / "tune_losses.py"), "--run.output_dir", str(tmp_path),
            "--run.classifier_path", str(digits_classifier_file), "--inversion.steps", "40",
            "--inversion.batch_size", "64", "--run.checkpoint_every", "20", "--tune.num_samples", "2",
            "--tune.max_concurrent_trials", "1", "--tune.scheduler", "fifo", "--tune.score_per_class", "5",
            "--keep.confidence_bar", "0.5"]
    starts = tmp_path / "default" / "tune" / "default-tune-inversion-starts"
    experiment = tmp_path / "default" / "tune" / "default-tune-inversion"
    first = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    try:
        # A trial counts as finished once Tune's experiment state records it (that is what a resume reads).
        while time.monotonic() < deadline and not any(
                "TERMINATED" in state.read_text(errors="ignore") for state in experiment.glob("experiment_state*.json")):
            assert first.poll() is None, "the search ended before it could be interrupted"
            time.sleep(0.5)
    finally:
        sessions.kill(first.pid)
        first.wait()
    started_before = {p.name.rsplit("-", 1)[0] for p in starts.glob("*")}
    assert len(started_before) >= 1
    assert not (tmp_path / "default" / "tune-best.yaml").exists()

    second = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "resuming the search" in second.stdout
    runs_per_trial: dict[str, int] = {}
    for start in starts.glob("*"):
        trial = start.name.rsplit("-", 1)[0]
        runs_per_trial[trial] = runs_per_trial.get(trial, 0) + 1
    assert len(runs_per_trial) == 2
    finished_first = sorted(runs_per_trial)[0]  # trial ids end in _00000, _00001, ...: the first one finished
    assert finished_first.endswith("_00000") and runs_per_trial[finished_first] == 1
    assert (tmp_path / "default" / "tune-best.yaml").is_file()
    table = (tmp_path / "default" / "tune-trials.csv").read_text().splitlines()
    assert len(table) == 1 + 2
