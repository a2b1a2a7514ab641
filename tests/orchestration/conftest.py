"""Fixtures for the orchestration tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def train_in_this_process(digits):
    """A function that trains `job`'s method on digits with the plain loop, in this process (no Ray Train), and
    writes the files a Train run writes: the reference a distributed run is held to, without paying for a
    second Train run."""
    from ccc_ray.classifiers.weights import load_classifier
    from ccc_ray.counterfeits.scorecard import train_in_process
    from ccc_ray.methods import method_class
    from ccc_ray.orchestration.train_method import build_method, write_method_files

    def train(job) -> None:
        classifier, info = load_classifier(job.run.classifier_file)
        method = build_method(job, method_class(job.generate.method), info, classifier.eval().requires_grad_(False),
                              "cpu")
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as a Train worker of 1 CPU runs, whatever earlier tests set here
        try:
            train_in_process(method, digits)
        finally:
            torch.set_num_threads(threads)
        job.run.run_dir.mkdir(parents=True, exist_ok=True)
        write_method_files(job, method, info)

    return train
