"""deploy/rayjob.yaml (KubeRay) stays in step with the code: its entrypoint is a job of ours and every
flag in it parses and validates as `ccc-ray pipeline` would, before anyone spends a cluster on it."""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml

from ccc_ray.cli import build_parser
from ccc_ray.config import overrides_from_args
from ccc_ray.job import load_job

REPO = Path(__file__).resolve().parents[2]


def test_rayjob_manifest_runs_a_valid_pipeline():
    manifest = yaml.safe_load((REPO / "deploy" / "rayjob.yaml").read_text())
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayJob"
    spec = manifest["spec"]
    python, script, *flags = shlex.split(spec["entrypoint"])
    assert python == "python" and script.endswith("/jobs/pipeline.py")
    assert (REPO / "jobs" / Path(script).name).is_file()
    job = load_job(None, overrides_from_args(build_parser().parse_args(["pipeline", *flags])))
    # Every node must reach checkpoints and counterfeits: object storage, not a pod's disk.
    assert job.run.ray_storage.startswith("s3://") and str(job.run.store_dir).startswith("s3://")
    assert job.run.max_failures > 0 and job.run.num_workers == 2
    cluster = spec["rayClusterSpec"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # no Train worker on the head
    (group,) = cluster["workerGroupSpecs"]
    assert group["replicas"] >= job.run.num_workers
    gpus = group["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
    assert job.run.use_gpu is True and int(gpus) >= 1
    assert spec["shutdownAfterJobFinishes"] is True
