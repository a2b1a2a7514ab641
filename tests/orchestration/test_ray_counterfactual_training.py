"""The counterfactual method (seed 002) under Ray Train: 2 workers reach the figures of 1, and a killed run
resumes from its last checkpoint with both modules (generator, joint model) and both optimisers restored.

The inversion method's equivalents are in test_ray_generator_training.py; this method differs in owning two
modules and two optimisers and in streaming real-data batches, which is what these tests exercise.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ccc_ray.classifiers.training import predict_logits
from ccc_ray.classifiers.weights import load_classifier
from ccc_ray.job import JobConfig, load_job
from ccc_ray.methods.generator_file import load_generator
from ccc_ray.orchestration.stages import train_generator_stage

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
METHOD = "counterfactual"


def job(tmp_path: Path, run_id: str, classifier_file: Path, **overrides) -> JobConfig:
    settings = {"run.output_dir": str(tmp_path), "run.run_id": run_id, "run.classifier_path": str(classifier_file),
                "generate.method": METHOD, f"{METHOD}.steps": 150, f"{METHOD}.batch_size": 64,
                f"{METHOD}.base_channels": 8, "run.checkpoint_every": 150}
    settings.update(overrides)
    return load_job(None, settings)


def figures(run_dir: Path, classifier_file: Path, digits) -> dict:
    """What BENCHMARKS reports for the method, on a small sample: the run's classifier's target rate on
    counterfactuals of test images, the mean change, and the joint model's clean accuracy in both readings."""
    classifier, _ = load_classifier(classifier_file)
    classifier.eval()
    method, _ = load_generator(run_dir / f"generator-{METHOD}.safetensors", classifier=classifier)
    targets = torch.arange(200) % digits.num_classes
    sampled = method.sample_with_lineage(targets, 0, digits)
    sources = method.source_images(digits, targets, 0)[0]
    joint, info = load_classifier(run_dir / f"classifier-{METHOD}.safetensors")
    assert info.reject_class
    joint_logits = predict_logits(joint.eval(), digits.test_images)
    k = digits.num_classes
    return {"target_rate": float((predict_logits(classifier, sampled.images).argmax(1) == targets).float().mean()),
            "mean_l1": float((sampled.images - sources).abs().mean()),
            "joint_class_head": float((joint_logits[:, :k].argmax(1) == digits.test_labels).float().mean()),
            "joint_k_plus_1": float((joint_logits.argmax(1) == digits.test_labels).float().mean())}


def test_two_workers_reach_the_figures_of_one(ray_cluster, tmp_path, digits_classifier_file, digits):
    results = {}
    for workers in (1, 2):
        # Without the adversarial reals (the paper's setting): this test is about sharding and gradient
        # averaging; at 150 steps the adversarial term's extra variance put the two runs 0.105 apart once
        # (tolerance 0.1). The killed-run test below trains with the default and must match bit for bit.
        config = job(tmp_path, f"w{workers}", digits_classifier_file,
                     **{"run.num_workers": workers, f"{METHOD}.adversarial_weight": 0.0})
        summary = train_generator_stage(config)
        assert summary["steps"] == 150 and summary["trained_classifier_file"]
        results[workers] = figures(tmp_path / f"w{workers}", digits_classifier_file, digits)
    one, two = results[1], results[2]
    print(results)
    # A short run: the point is that 2 workers (half the batch each, gradients averaged) match 1, not the level.
    assert one["target_rate"] >= 0.6 and two["target_rate"] >= 0.6
    assert abs(one["target_rate"] - two["target_rate"]) <= 0.1
    assert abs(one["mean_l1"] - two["mean_l1"]) <= 0.2 * one["mean_l1"]
    for reading in ("joint_class_head", "joint_k_plus_1"):
        assert abs(one[reading] - two[reading]) <= 0.05, reading
    assert one["joint_class_head"] >= 0.9 and two["joint_class_head"] >= 0.9


def tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def test_killed_run_resumes_both_modules_and_optimisers(ray_cluster, tmp_path, digits_classifier_file, sessions):
    steps, every = 160, 20  # killed at a checkpoint from step 20 on: 20-140 steps left to redo exactly
    settings = {f"{METHOD}.steps": steps, f"{METHOD}.batch_size": 32, f"{METHOD}.base_channels": 4,
                f"{METHOD}.embed_dim": 4, "run.checkpoint_every": every}

    def args(run_id: str) -> list[str]:
        return [sys.executable, str(REPO / "jobs" / "train_generator.py"), "--run.output_dir", str(tmp_path),
                "--run.run_id", run_id, "--run.classifier_path", str(digits_classifier_file),
                "--generate.method", METHOD, *(str(part) for key, value in settings.items()
                                               for part in (f"--{key}", value))]

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # The uninterrupted run, on the session's Ray (a job process of its own would only add a Ray start): what
    # the resumed job must reproduce exactly. Same settings, one 1-CPU Train worker either way.
    assert train_generator_stage(job(tmp_path, "whole", digits_classifier_file, **settings))["steps"] == steps

    storage = tmp_path / "killed" / "ray" / f"killed-generator-{METHOD}"
    first = subprocess.Popen(args("killed"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                             start_new_session=True)
    sessions.track(first.pid)
    deadline = time.monotonic() + 240
    try:
        snapshot = storage / "checkpoint_manager_snapshot.json"
        while time.monotonic() < deadline and not (snapshot.is_file() and "checkpoint_" in snapshot.read_text()):
            assert first.poll() is None, first.stdout.read()
            time.sleep(0.2)
        assert snapshot.is_file(), "no checkpoint within the deadline"
    finally:
        sessions.kill(first.pid)  # driver, its local Ray and the Train workers: no graceful shutdown
        first.wait()
    assert not (tmp_path / "killed" / f"generator-{METHOD}.safetensors").exists()
    assert not (tmp_path / "killed" / f"classifier-{METHOD}.safetensors").exists()
    # The checkpoint holds both modules and both optimisers (Adam moments included).
    checkpoints = sorted(storage.glob("checkpoint_*/state.pt"))
    assert checkpoints
    state = torch.load(checkpoints[-1], weights_only=True)
    assert set(state["modules"]) == set(state["optimizers"]) == {"generator", "joint"}
    assert all(state["optimizers"][name]["state"] for name in ("generator", "joint"))
    assert 0 < state["step"] < steps

    second = subprocess.run(args("killed"), capture_output=True, text=True, env=env, timeout=400)
    output = second.stdout + second.stderr
    assert second.returncode == 0, output
    resumed = [line for line in output.splitlines() if "resumed from the checkpoint at step" in line]
    assert resumed, output
    step = int(resumed[0].rsplit(" ", 1)[1])
    assert every <= step < steps and step % every == 0
    assert f"step {every}/{steps} " not in output.split(resumed[0], 1)[1]  # nothing before the checkpoint was redone
    # Bit for bit the uninterrupted run's generator and joint model: a module or optimiser left at its fresh
    # state, or a batch or random draw out of place, would leave them apart after the remaining steps.
    for name in (f"generator-{METHOD}.safetensors", f"classifier-{METHOD}.safetensors"):
        expected, got = tensors(tmp_path / "whole" / name), tensors(tmp_path / "killed" / name)
        assert set(expected) == set(got), name
        for key in expected:
            assert torch.equal(expected[key], got[key]), f"{name}: {key}"
