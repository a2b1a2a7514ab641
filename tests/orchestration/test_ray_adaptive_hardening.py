"""`harden.mode adaptive` under Ray Train, reduced: it trains, checkpoints the attacker, and keeps the digits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ccc_ray.classifiers.training import accuracy
from ccc_ray.classifiers.weights import load_classifier
from ccc_ray.job import load_job
from ccc_ray.orchestration.harden_classifier import harden_classifier
from ccc_ray.store import CounterfeitWriter, counterfeit_batch

pytestmark = pytest.mark.slow


def noise_store(folder: Path, n: int = 40) -> str:
    images = np.random.default_rng(0).integers(0, 256, size=(n, 8, 8, 1), dtype=np.uint8)
    targets = np.arange(n) % 10
    with CounterfeitWriter(folder, "inversion", "r0", {}, [str(i) for i in range(10)]) as writer:
        writer.write(counterfeit_batch(images, targets, targets, np.full(n, 0.995), np.full(n, 3.0), np.arange(n),
                                       run_id="r0", method="inversion", classifier_sha256="ab" * 32, seed=1))
    return str(writer.path)


def test_adaptive_mode_trains_a_reject_class_and_checkpoints_its_attacker(ray_cluster, tmp_path, digits,
                                                                          digits_classifier_file):
    job = load_job(None, {"run.output_dir": str(tmp_path), "run.run_id": "adaptive",
                          "harden.mode": "adaptive", "harden.epochs": 2, "harden.outliers_per_step": 16,
                          "harden.pgd_steps": 2})
    baseline, _ = load_classifier(digits_classifier_file)
    output = tmp_path / "hardened.safetensors"
    info, metrics = harden_classifier(job, digits_classifier_file, [noise_store(tmp_path / "store")], output,
                                      "adaptive-harden")
    assert info.reject_class and metrics["epoch"] == 2
    hardened, _ = load_classifier(output)
    assert hardened(torch.zeros(1, 1, 8, 8)).shape == (1, 11)
    # Only far outliers are labelled reject, so the digits stay digits.
    assert accuracy(hardened, digits.test_images, digits.test_labels) >= \
        accuracy(baseline, digits.test_images, digits.test_labels) - 0.05
    checkpoints = sorted(p for p in (tmp_path / "adaptive" / "ray" / "adaptive-harden").glob("checkpoint_*")
                         if p.is_dir())
    state = torch.load(checkpoints[-1] / "state.pt", weights_only=True)
    assert state["epoch"] == 2 and "generator" in state["attacker"]["modules"]
    assert state["attacker"]["step"] > 0  # the generator kept training against the classifier
