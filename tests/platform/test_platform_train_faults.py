"""Faults in a Ray Train run, on the strictest method to restore: the counterfactual one (seed 002) owns two
modules and two optimisers and streams real-data batches, so a restore that misses any of them, or puts a
batch or a random draw out of place, leaves its files apart from an uninterrupted run's.

One run meets every fault in turn: the whole job SIGKILLed (driver, its local Ray, the Train workers); the
same command started again, resuming from the last checkpoint, and its Train worker SIGKILLed mid-run, which
`--run.max_failures` lets the controller replace from the newest checkpoint. The files it ends with are bit
for bit an uninterrupted run's. Then its latest checkpoint is replaced by a malicious pickle: refused
directly, and when Ray Train restores it for a restart of the run, without running it.

Every trained method shares this loop and its checkpoints (`ccc_ray/orchestration/train_method.py`), so a
method with fewer parts (inversion: one module, no real data) restores through a subset of this.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ccc_ray import cli
from ccc_ray.errors import CccError
from ccc_ray.job import load_job
from ccc_ray.orchestration.checkpoints import load_checkpoint_state
from ccc_ray.orchestration.stages import train_generator_stage

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
METHOD = "counterfactual"
STEPS, EVERY = 160, 20  # ~45 ms a step here: the resumed job's worker is killed with 100+ steps still to go
SETTINGS = {f"{METHOD}.steps": STEPS, f"{METHOD}.batch_size": 32, f"{METHOD}.base_channels": 4,
            f"{METHOD}.embed_dim": 4, "run.checkpoint_every": EVERY}
RESUMED = re.compile(r"resumed from the checkpoint at step (\d+)")
PRINTED_STEP = re.compile(rf"\] {METHOD} step (\d+)/{STEPS} ")


def train_workers(session: int) -> list[int]:
    """Pids of the Ray Train workers among a process session's processes."""
    rows = subprocess.run(["ps", "-eo", "pid=,sid=,args="], capture_output=True, text=True, check=False).stdout
    return [int(row.split()[0]) for row in rows.splitlines()
            if len(row.split()) > 2 and int(row.split()[1]) == session and row.split()[2] == "ray::RayTrainWorker"]


def recorded_step(snapshot: Path) -> int:
    """The step of the newest checkpoint the Train controller has recorded (0 before the first; a file being
    rewritten reads as 0 until it is whole)."""
    try:
        latest = json.loads(snapshot.read_text()).get("latest_checkpoint_result") or {}
    except (OSError, ValueError):
        return 0
    return int(latest.get("metrics", {}).get("step", 0))


def wait_for_checkpoint(job: subprocess.Popen, snapshot: Path, after: int, deadline: float) -> int:
    while time.monotonic() < deadline:
        assert job.poll() is None, f"the job ended before its checkpoint after step {after} was recorded"
        step = recorded_step(snapshot)
        if step > after:
            return step
        time.sleep(0.1)
    raise AssertionError(f"no checkpoint after step {after} within the deadline")


def tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


class _RunsACommand:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def malicious_pickle(marker: Path) -> bytes:
    """torch.save of a state whose unpickling would call os.system (as a weights_only=False load would)."""
    import io

    buffer = io.BytesIO()
    torch.save({"modules": _RunsACommand(marker), "step": EVERY}, buffer)
    return buffer.getvalue()


def test_a_killed_job_and_a_killed_worker_resume_bit_for_bit_and_a_planted_checkpoint_is_refused(
        ray_cluster, tmp_path, digits_classifier_file, sessions, capsys):
    options = [str(part) for key, value in SETTINGS.items() for part in (f"--{key}", value)]
    common = ["--run.output_dir", str(tmp_path), "--run.run_id", "faults",
              "--run.classifier_path", str(digits_classifier_file), "--generate.method", METHOD, *options]
    job_command = [sys.executable, str(REPO / "jobs" / "train_generator.py"), *common]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    outputs = [f"generator-{METHOD}.safetensors", f"classifier-{METHOD}.safetensors"]

    # What the faulted run must end with: the same settings trained without a fault, on the session's Ray
    # (a job process of its own would only add a Ray start). One 1-CPU Train worker either way.
    whole = load_job(None, {"run.output_dir": str(tmp_path), "run.run_id": "whole",
                            "run.classifier_path": str(digits_classifier_file), "generate.method": METHOD, **SETTINGS})
    assert train_generator_stage(whole)["steps"] == STEPS

    # 1. The whole job SIGKILLed once its first checkpoint is recorded: no graceful shutdown of anything.
    storage = tmp_path / "faults" / "ray" / f"faults-generator-{METHOD}"
    snapshot = storage / "checkpoint_manager_snapshot.json"
    first = subprocess.Popen(job_command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                             start_new_session=True)
    sessions.track(first.pid)
    try:
        wait_for_checkpoint(first, snapshot, 0, time.monotonic() + 240)
    finally:
        sessions.kill(first.pid)
        first.wait()
    assert not any((tmp_path / "faults" / name).exists() for name in outputs)
    # The checkpoint holds both modules and both optimisers (Adam moments included).
    state = torch.load(sorted(storage.glob("checkpoint_*/state.pt"))[-1], weights_only=True)
    assert set(state["modules"]) == set(state["optimizers"]) == {"generator", "joint"}
    assert all(state["optimizers"][name]["state"] for name in ("generator", "joint"))
    assert 0 < state["step"] < STEPS

    # 2. The same command again resumes; once it has recorded a checkpoint of its own, its one Train worker
    # is SIGKILLed (driver, controller and Ray stay up) and the controller restores a new one from it.
    second = subprocess.Popen([*job_command, "--run.max_failures", "1"], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
    sessions.track(second.pid)
    wait_for_checkpoint(second, snapshot, recorded_step(snapshot), time.monotonic() + 240)
    workers = train_workers(second.pid)
    assert len(workers) == 1, "expected the one Train worker of the run"
    os.kill(workers[0], signal.SIGKILL)
    output, _ = second.communicate(timeout=400)
    assert second.returncode == 0, output[-4000:]
    assert "RayTrainWorker" in output and ("died" in output or "SYSTEM_ERROR" in output)  # the controller saw it

    # Resumed twice (job, then worker), each time from a later checkpoint, and no step at or before a
    # checkpoint it resumed from was trained again.
    parts = RESUMED.split(output)  # [before, step, after, step, after]
    resumed = [int(step) for step in parts[1::2]]
    print(f"killed job resumed at step {resumed[:1]}, killed worker restored at step {resumed[1:]} of {STEPS}")
    assert len(resumed) == 2 and EVERY <= resumed[0] < resumed[1] < STEPS, output[-4000:]
    assert all(step % EVERY == 0 for step in resumed)
    for step, after in zip(resumed, parts[2::2]):
        assert all(int(printed) > step for printed in PRINTED_STEP.findall(after)), output[-4000:]
    summary, _ = json.JSONDecoder().raw_decode(output[output.rindex("\n{\n") + 1:])  # Ray may log after it
    assert summary["steps"] == STEPS

    # Bit for bit the uninterrupted run's generator and joint model.
    for name in outputs:
        expected, got = tensors(tmp_path / "whole" / name), tensors(tmp_path / "faults" / name)
        assert set(expected) == set(got), name
        for key in expected:
            assert torch.equal(expected[key], got[key]), f"{name}: {key}"

    # 3. Untrusted storage: the run's latest checkpoint replaced by a pickle that would run a command.
    latest = max((path for path in storage.glob("checkpoint_*") if path.is_dir()), key=lambda path: path.name)
    marker = tmp_path / "pwned"
    (latest / "state.pt").write_bytes(malicious_pickle(marker))
    import ray.train

    with pytest.raises(CccError, match=r"state.pt was refused.*unsupported GLOBAL posix.system.*nothing in it was run"):
        load_checkpoint_state(ray.train.Checkpoint(str(latest)))
    # Starting the run again (here, on the session's Ray) restores that checkpoint on a Train worker, which
    # refuses it: one line, exit code 2, and the command in the pickle never ran.
    capsys.readouterr()
    assert cli.main(["train-generator", *common, "--run.max_failures", "0"]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert any(line.startswith(f"ccc-ray train-generator: error: checkpoint '{latest}': state.pt was refused")
               for line in errors), errors[-20:]
    assert not marker.exists()
