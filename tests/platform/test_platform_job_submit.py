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
import pyarrow.parquet as pq
import pytest
from PIL import Image

from ccc_ray.store import read_store

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).parent / "ray")
# Every stage runs, each for seconds: one round with its scorecard, the data guard, the ONNX export.
REDUCED = ["--classifier.epochs", "8", "--inversion.steps", "150", "--inversion.batch_size", "128",
           "--run.checkpoint_every", "50", "--generate.per_class", "20", "--keep.confidence_bar", "0.9",
           "--harden.epochs", "3", "--harden.reattack_steps", "60", "--harden.real_ood_per_set", "50",
           "--rounds", "1", "--scorecard.per_class", "1", "--scorecard.generator_steps", "5",
           "--scorecard.generations", "3", "--gradient_ascent.steps", "10"]


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


def test_reduced_pipeline_submitted_as_a_ray_job_writes_every_artifact(ray_head, tmp_path):
    """The whole loop as a platform runs it (and the one end-to-end run of `jobs/pipeline.py` in the suite:
    the job entry point, every stage and artifact; a local start is what the killed-run tests run)."""
    url, env = ray_head
    submit = [RAY, "job", "submit", "--address", url, "--submission-id", "ccc-platform-test",
              "--working-dir", str(REPO), "--", "python", "jobs/pipeline.py",
              "--run.output_dir", str(tmp_path), "--run.run_id", "submitted", *REDUCED]
    result = subprocess.run(submit, capture_output=True, text=True, env=env, timeout=600, check=False)
    logs = result.stdout + result.stderr
    assert result.returncode == 0, logs[-5000:]
    assert "Job 'ccc-platform-test' succeeded" in logs
    assert job_info(url, env["RAY_AUTH_TOKEN"], "ccc-platform-test")["status"] == "SUCCEEDED"
    assert "== harden, evaluate, export" in logs
    assert "working_dir_files" in logs or "Uploading package" in logs  # it ran from the uploaded copy

    run = tmp_path / "submitted"
    for name in ("classifier.safetensors", "generator-inversion.safetensors", "report.json", "report.md",
                 "counterfeits.png", "roc-before.png", "roc-after.png", "classifier-hardened.onnx"):
        assert (run / name).is_file(), name
    report = json.loads((run / "report.json").read_text())
    assert [row["round"] for row in report["rounds"]] == [0, 1]
    assert all(row["scorecard"] for row in report["rounds"])  # the scorecard of every round, by default
    assert report["rounds"][1]["guard"]["reference_images"] > 1000  # the default data guard, fitted
    assert {"counterfeits_held_out", "photo_patches", "letters"} <= set(report["rounds"][1]["ood"])
    assert max(report["export"]["parity_max_abs_probability_difference"].values()) <= 1e-5
    assert "| 1 |" in (run / "report.md").read_text()
    table = read_store(run / "counterfeits", image_shape=(1, 8, 8), num_classes=10)
    assert table.num_rows > 0 and set(table["run_id"].to_pylist()) == {"submitted"}
    rows = pq.read_table(run / "counterfeits" / "inversion-submitted.parquet")
    assert rows.num_rows > 0 and set(rows["method"].to_pylist()) == {"inversion"}
    split = json.loads((run / "rounds" / "submitted.r1" / "counterfeit-split.json").read_text())
    assert not set(split["train_ids"]) & set(split["held_out_ids"])
    model = onnx.load(str(run / "classifier-hardened.onnx"))
    props = {prop.key: prop.value for prop in model.metadata_props}
    assert {"ccc_ray.ood_score", "ccc_ray.threshold"} <= set(props)
    assert json.loads(props["ccc_ray.reject_class"]) is True and props["ccc_ray.ood_score"] == '"not_reject"'
    with Image.open(run / "counterfeits.png") as grid:
        assert grid.size[0] > 100 and grid.size[1] > 100
    assert any((run / "ray").glob("submitted-generator-inversion/checkpoint_*"))  # Train checkpoints
