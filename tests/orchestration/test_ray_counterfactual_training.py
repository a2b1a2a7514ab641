"""The counterfactual method (seed 002) under Ray Train: 2 workers reach the figures of 1.

The inversion method's equivalent is in test_ray_generator_training.py; this method differs in owning two
modules and two optimisers and in streaming real-data batches, which is what this test exercises. Its
killed and restored runs are in tests/platform/test_platform_train_faults.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ccc_ray.classifiers.training import predict_logits
from ccc_ray.classifiers.weights import load_classifier
from ccc_ray.job import JobConfig, load_job
from ccc_ray.methods.generator_file import load_generator
from ccc_ray.orchestration.stages import train_generator_stage

pytestmark = pytest.mark.slow
METHOD = "counterfactual"


def job(tmp_path: Path, run_id: str, classifier_file: Path, **overrides) -> JobConfig:
    settings = {"run.output_dir": str(tmp_path), "run.run_id": run_id, "run.classifier_path": str(classifier_file),
                "generate.method": METHOD, f"{METHOD}.steps": 150, f"{METHOD}.batch_size": 64,
                f"{METHOD}.base_channels": 8, "run.checkpoint_every": 150}
    settings.update(overrides)
    return load_job(None, settings)


def figures(run_dir: Path, classifier_file: Path, digits) -> dict:
    """What BENCHMARKS reports for the method, on 1,000 samples: the run's classifier's target rate on
    counterfactuals of test images, the mean change, and the joint model's clean accuracy in both readings."""
    classifier, _ = load_classifier(classifier_file)
    classifier.eval()
    method, _ = load_generator(run_dir / f"generator-{METHOD}.safetensors", classifier=classifier)
    targets = torch.arange(1000) % digits.num_classes
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


def test_two_workers_reach_the_figures_of_one(ray_cluster, tmp_path, digits_classifier_file, digits,
                                              train_in_this_process):
    results = {}
    for workers in (1, 2):
        # Without the adversarial reals (the paper's setting): this test is about sharding and gradient
        # averaging. The fault test (tests/platform) trains with the default and must match bit for bit.
        config = job(tmp_path, f"w{workers}", digits_classifier_file,
                     **{"run.num_workers": workers, f"{METHOD}.adversarial_weight": 0.0})
        if workers == 1:  # the reference: the plain loop in this process, as in test_ray_generator_training.py
            train_in_this_process(config)
        else:
            summary = train_generator_stage(config)
            assert summary["steps"] == 150 and summary["trained_classifier_file"]
        results[workers] = figures(tmp_path / f"w{workers}", digits_classifier_file, digits)
    one, two = results[1], results[2]
    print(results)
    # A short run: the point is that 2 workers (half the batch each, gradients averaged) match 1, not the level.
    assert one["target_rate"] >= 0.6 and two["target_rate"] >= 0.6
    # Two single runs differ by chance, not by worker count: over seeds 0-9 two minus one had mean -0.006 and
    # standard deviation 0.037 in target rate (largest 0.071), so 0.1 is 2.7 standard deviations. That holds
    # because both runs see the same batch each step (methods.base.real_data_loader); when the reference
    # drew its own order the deviation was 0.080 and 2 of the 10 seeds missed 0.1.
    assert abs(one["target_rate"] - two["target_rate"]) <= 0.1
    assert abs(one["mean_l1"] - two["mean_l1"]) <= 0.2 * one["mean_l1"]
    for reading in ("joint_class_head", "joint_k_plus_1"):
        assert abs(one[reading] - two[reading]) <= 0.05, reading
    assert one["joint_class_head"] >= 0.9 and two["joint_class_head"] >= 0.9
