"""A Ray Train worker SIGKILLed mid-run: with `--run.max_failures` > 0 the run restores its last
checkpoint, completes, and reaches the quality of an uninterrupted run. The run's own latest checkpoint,
once replaced by a malicious pickle, is refused without running it, directly and when Ray Train restores
it for a restart of the run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ccc_ray.classifiers.weights import load_classifier
from ccc_ray.errors import CccError
from ccc_ray.methods.generator_file import load_generator
from ccc_ray.methods import MethodContext
from ccc_ray.methods.inversion import InversionConfig, NetworkInversion
from ccc_ray.orchestration.checkpoints import load_checkpoint_state
from ccc_ray.orchestration.train_method import step_generator

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
STEPS, EVERY, BATCH = 160, 40, 64


def train_workers(session: int) -> list[int]:
    rows = subprocess.run(["ps", "-eo", "pid=,sid=,args="], capture_output=True, text=True, check=False).stdout.splitlines()
    return [int(row.split()[0]) for row in rows
            if len(row.split()) > 2 and int(row.split()[1]) == session and row.split()[2] == "ray::RayTrainWorker"]


def kept_share(method, classifier, per_class: int = 30, threshold: float = 0.9) -> float:
    """Share of fixed-seed samples whose target confidence reaches `threshold`: the generator's quality."""
    targets = torch.arange(10).repeat_interleave(per_class)
    with torch.no_grad():
        probabilities = torch.softmax(classifier(method.sample(targets, seed=123)), dim=1)
    return float((probabilities.gather(1, targets[:, None]).squeeze(1) >= threshold).float().mean())


def uninterrupted_generator(classifier) -> NetworkInversion:
    """The same steps and latents as the Ray run (one worker, one thread), trained here without interruption."""
    method = NetworkInversion(InversionConfig(steps=STEPS, batch_size=BATCH), MethodContext((1, 8, 8), 10, classifier))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        while method.step < STEPS:
            method.training_step(None, step_generator(0, 0, method.step, torch.device("cpu")), BATCH)
    finally:
        torch.set_num_threads(threads)
    return method


def test_killed_worker_is_restored_from_its_checkpoint(tmp_path, digits_classifier_file, sessions):
    args = [sys.executable, str(REPO / "jobs" / "train_generator.py"), "--run.output_dir", str(tmp_path),
            "--run.run_id", "fault", "--run.classifier_path", str(digits_classifier_file),
            "--inversion.steps", str(STEPS), "--inversion.batch_size", str(BATCH),
            "--run.checkpoint_every", str(EVERY), "--run.max_failures", "2"]
    storage = tmp_path / "fault" / "ray" / "fault-generator-inversion"
    snapshot = storage / "checkpoint_manager_snapshot.json"
    run = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
    sessions.track(run.pid)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (snapshot.is_file() and "checkpoint_" in snapshot.read_text()):
        assert run.poll() is None, run.stdout.read()
        time.sleep(0.1)
    workers = train_workers(run.pid)
    assert len(workers) == 1, "expected the one Train worker of the run"
    os.kill(workers[0], signal.SIGKILL)  # the worker only: driver, controller and Ray stay up
    output, _ = run.communicate(timeout=420)
    assert run.returncode == 0, output[-4000:]

    # The controller saw the worker die, started a new one, and it resumed from a recorded checkpoint.
    assert "RayTrainWorker" in output and ("died" in output or "SYSTEM_ERROR" in output)
    resumed = [line for line in output.splitlines() if "resumed from the checkpoint at step" in line]
    assert len(resumed) == 1, output[-4000:]
    step = int(resumed[0].rsplit(" ", 1)[1])
    assert EVERY <= step < STEPS and step % EVERY == 0
    assert f"step {EVERY}/{STEPS} " not in output.split(resumed[0], 1)[1]  # nothing before it was redone
    # The job's summary is the last JSON object it printed; Ray may log more lines after it.
    summary, _ = json.JSONDecoder().raw_decode(output[output.rindex("\n{\n") + 1:])
    assert summary["steps"] == STEPS

    # Same final quality as an uninterrupted run. Not bit-identical: dropout draws from torch's global
    # RNG, which a checkpoint does not carry; latents and weights do come back exactly.
    classifier, _ = load_classifier(digits_classifier_file)
    recovered, _ = load_generator(tmp_path / "fault" / "generator-inversion.safetensors")
    reference = uninterrupted_generator(classifier)
    recovered_share, reference_share = kept_share(recovered, classifier), kept_share(reference, classifier)
    print(f"kept share at 0.9: recovered {recovered_share:.3f}, uninterrupted {reference_share:.3f}")
    assert abs(recovered_share - reference_share) <= 0.1

    # Untrusted storage: the run's latest checkpoint replaced by a pickle that would run a command.
    latest = max((p for p in storage.glob("checkpoint_*") if p.is_dir()), key=lambda p: p.name)
    marker = tmp_path / "pwned"
    (latest / "state.pt").write_bytes(malicious_pickle(marker))
    import ray.train

    with pytest.raises(CccError, match=r"state.pt was refused.*unsupported GLOBAL posix.system.*nothing in it was run"):
        load_checkpoint_state(ray.train.Checkpoint(str(latest)))
    # Through Ray Train: starting the run again restores that checkpoint on a worker, which refuses it;
    # the job ends with one line and exit code 2, and the command in the pickle never ran.
    restart = [*args[:-2], "--run.max_failures", "0"]
    again = subprocess.run(restart, capture_output=True, text=True, timeout=300, check=False)
    assert again.returncode == 2, again.stdout[-3000:] + again.stderr[-3000:]
    assert any(line.startswith(f"ccc-ray train-generator: error: checkpoint '{latest}': state.pt was refused")
               for line in again.stderr.splitlines()), again.stderr[-3000:]
    assert not marker.exists()


class _RunsACommand:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def malicious_pickle(marker: Path) -> bytes:
    """torch.save of a state whose unpickling would call os.system (as a weights_only=False load would)."""
    import io

    buffer = io.BytesIO()
    torch.save({"generator": _RunsACommand(marker), "step": 40}, buffer)
    return buffer.getvalue()
