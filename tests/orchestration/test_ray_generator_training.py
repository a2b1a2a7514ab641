"""Generator training under Ray Train: 2 workers reach the quality of 1. Killed and restored runs, for every
trained method, are in tests/platform/test_platform_train_faults.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from ccc_ray.job import load_job
from ccc_ray.job import JobConfig
from ccc_ray.orchestration.generation import generate_from_file
from ccc_ray.orchestration.stages import train_generator_stage

pytestmark = pytest.mark.slow


def job(tmp_path: Path, run_id: str, classifier_file: Path, **overrides) -> JobConfig:
    settings = {"run.output_dir": str(tmp_path), "run.run_id": run_id, "run.classifier_path": str(classifier_file),
                "inversion.steps": 500, "inversion.batch_size": 128, "run.checkpoint_every": 100,
                "generate.per_class": 30, "keep.confidence_bar": 0.9}
    settings.update(overrides)
    return load_job(None, settings)


def test_two_workers_train_to_the_quality_of_one(ray_cluster, tmp_path, digits_classifier_file, train_in_this_process):
    """One worker's reference is the plain loop in this process: the steps, batch and random draws of a
    1-worker Train run (rank 0's), without the ~10 s a Train run's start costs here."""
    reports = {}
    for workers in (1, 2):
        config = job(tmp_path, f"w{workers}", digits_classifier_file, **{"run.num_workers": workers})
        if workers == 1:
            train_in_this_process(config)
        else:
            assert train_generator_stage(config)["steps"] == 500
        reports[workers] = generate_from_file(config, progress=False)
    one, two = reports[1], reports[2]
    diversity = {w: sorted(r.diversity_ratio_per_class.values()) for w, r in reports.items()}
    print({w: (r.kept_share, r.distance_ratio, diversity[w]) for w, r in reports.items()})
    # A short run against a briefly trained classifier: the point is that 2 workers match 1, not the level.
    assert one.kept_share >= 0.8 and two.kept_share >= 0.8
    assert abs(one.kept_share - two.kept_share) <= 0.1
    assert two.distance_ratio >= 0.8 * one.distance_ratio
    # The median class: at this length a class or two may keep fewer than 2 of its 30 samples (ratio 0).
    assert diversity[1][5] > 0 and diversity[2][5] >= 0.8 * diversity[1][5]
