"""Job submission for real: a Ray head started with `ray start --head` on loopback, `jobs/pipeline.py`
submitted to it with `ray job submit --working-dir`, SUCCEEDED, outputs read back, and the head stopped by
its own session's pids (never `ray stop`: other Ray clusters on the machine stay up).

The head requires Ray's token authentication, with a token made for this test; the `ray` commands get it
from RAY_AUTH_TOKEN in their environment, as a platform's CI would.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import onnx
import pytest

from ccc_ray.store import read_store

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).parent / "ray")
# The reduced settings: every stage runs, each for seconds.
REDUCED = ["--classifier.epochs", "3", "--inversion.steps", "40", "--inversion.batch_size", "128",
           "--run.checkpoint_every", "20", "--generate.per_class", "5", "--keep.confidence_bar", "0.3",
           "--harden.epochs", "1", "--harden.reattack_steps", "10", "--harden.real_ood_per_set", "20",
           "--scorecard.each_round", "false"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def api_get(url: str, token: str, path: str) -> dict:
    request = urllib.request.Request(f"{url}{path}", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def job_api_up(url: str, token: str) -> bool:
    try:
        return "ray_version" in api_get(url, token, "/api/version")
    except OSError:
        return False


def job_info(url: str, token: str, submission_id: str) -> dict:
    """The job's record from the Job Submission REST API (what the SDK and `ray job status` read)."""
    return api_get(url, token, f"/api/jobs/{submission_id}")


@pytest.fixture
def ray_head(sessions):
    """`ray start --head` on 127.0.0.1 with its own temp dir, ports and token; yields (job API URL, env)."""
    temp_dir = Path(tempfile.mkdtemp(prefix="ccc-js-", dir="/tmp")) / "ray"  # short: Ray's socket paths
    token = secrets.token_hex(32)
    env = {key: value for key, value in os.environ.items() if not key.startswith(("RAY_ADDRESS", "RAY_AUTH"))}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token,
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")  # `python` = this venv
    dashboard = free_port()
    command = [RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={free_port()}",
               "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
               f"--dashboard-agent-listen-port={free_port()}", f"--ray-client-server-port={free_port()}",
               "--num-cpus=4", f"--temp-dir={temp_dir}", "--disable-usage-stats"]
    start = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                             start_new_session=True)
    sessions.track(start.pid)  # the head's daemons keep `ray start`'s session: teardown kills exactly them
    output, _ = start.communicate(timeout=180)
    assert start.returncode == 0, output
    url = f"http://127.0.0.1:{dashboard}"
    deadline = time.monotonic() + 120
    while not job_api_up(url, token):
        assert time.monotonic() < deadline, f"the job API at {url} did not come up:\n{output}"
        time.sleep(1)
    yield url, env
    sessions.kill(start.pid)
    assert sessions.pids(start.pid) == []
    shutil.rmtree(temp_dir.parent, ignore_errors=True)


def test_pipeline_submitted_as_a_ray_job(ray_head, tmp_path):
    url, env = ray_head
    submit = [RAY, "job", "submit", "--address", url, "--submission-id", "ccc-platform-test",
              "--working-dir", str(REPO), "--", "python", "jobs/pipeline.py",
              "--run.output_dir", str(tmp_path), "--run.run_id", "submitted", *REDUCED]
    result = subprocess.run(submit, capture_output=True, text=True, env=env, timeout=480, check=False)
    logs = result.stdout + result.stderr
    assert result.returncode == 0, logs[-5000:]
    assert "Job 'ccc-platform-test' succeeded" in logs
    assert job_info(url, env["RAY_AUTH_TOKEN"], "ccc-platform-test")["status"] == "SUCCEEDED"
    assert "== harden, evaluate, export" in logs
    assert "working_dir_files" in logs or "Uploading package" in logs  # it ran from the uploaded copy

    run = tmp_path / "submitted"
    report = json.loads((run / "report.json").read_text())
    assert [row["round"] for row in report["rounds"]] == [0, 1]
    table = read_store(run / "counterfeits", image_shape=(1, 8, 8), num_classes=10)
    assert table.num_rows > 0 and set(table["run_id"].to_pylist()) == {"submitted"}
    model = onnx.load(str(run / "classifier-hardened.onnx"))
    assert {prop.key for prop in model.metadata_props} >= {"ccc_ray.ood_score", "ccc_ray.threshold"}
    assert any((run / "ray").glob("submitted-generator-inversion/checkpoint_*"))  # Train checkpoints
