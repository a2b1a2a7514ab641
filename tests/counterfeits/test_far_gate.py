"""The far rule decides what is stored (and so trained as reject): near confident samples are dropped."""

from __future__ import annotations

import pytest
import torch

from ccc_ray.classifiers.weights import load_classifier
from ccc_ray.counterfeits.far import FarRule, fit_far_rule
from ccc_ray.counterfeits.generate import generate_counterfeits
from ccc_ray.errors import CccError
from ccc_ray.methods import Sampled
from ccc_ray.store.reader import read_store

torch.set_num_threads(1)


class TrainingCopies:
    """A stand-in method: even samples are training digits (near, distance 0), odd ones uniform noise (far)."""

    name = "copies"

    def __init__(self, dataset, near_only: bool = False):
        self.dataset = dataset
        self.near_only = near_only

    def sample_with_lineage(self, targets, seed, dataset=None):
        images = self.dataset.train_images[:len(targets)].clone()
        if not self.near_only:
            images[1::2] = torch.rand(images[1::2].shape, generator=torch.Generator().manual_seed(seed))
        return Sampled(images)


def generate(tmp_path, digits, classifier, method, far):
    return generate_counterfeits(method, classifier, "0" * 64, digits, store_dir=tmp_path, run_id="gate",
                                 per_class=2, confidence_bar=1e-6, seed=0, batch_size=8, run_metadata={},
                                 progress=False, far=far)


def test_near_confident_samples_are_not_stored_and_are_counted(tmp_path, digits, digits_classifier_file):
    classifier, _ = load_classifier(digits_classifier_file)
    far = fit_far_rule(FarRule(), digits)
    report = generate(tmp_path, digits, classifier, TrainingCopies(digits), far)
    assert (report.kept, report.near_dropped, report.sampled) == (10, 10, 20)  # bar 1e-6: all confident
    assert read_store(report.store_file, digits.image_shape, digits.num_classes).num_rows == 10
    ungated = generate(tmp_path / "all", digits, classifier, TrainingCopies(digits), None)
    assert (ungated.kept, ungated.near_dropped) == (20, 0)


def test_only_near_samples_is_one_ccc_error_and_no_file(tmp_path, digits, digits_classifier_file):
    classifier, _ = load_classifier(digits_classifier_file)
    with pytest.raises(CccError, match="far from the data \\(20 confident ones were near\\)"):
        generate(tmp_path, digits, classifier, TrainingCopies(digits, near_only=True), fit_far_rule(FarRule(), digits))
    assert not list(tmp_path.rglob("*.parquet"))
