"""Evaluation and the re-attack on Ray Data: an actor pool gives the scores and verdicts the driver's own
loop gives, whatever the number of actors, while only per-row values come back."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ccc_ray.classifiers.weights import load_classifier
from ccc_ray.counterfeits.far import fit_far_rule
from ccc_ray.evaluate import evaluation_from_scores, row_scores
from ccc_ray.hardening.pool import scan_pool
from ccc_ray.job import load_job
from ccc_ray.orchestration.evaluation import (EVAL_IN_PROCESS_LIMIT, HELD_OUT, eval_actor_count,
                                              score_sets_in_process, score_sets_on_ray)
from ccc_ray.orchestration.reattack import reattack_success
from ccc_ray.store import CounterfeitWriter, counterfeit_batch

NAMES = [str(i) for i in range(10)]


def write_store(folder, method, n, seed):
    images = np.random.default_rng(seed).integers(0, 256, size=(n, 8, 8, 1), dtype=np.uint8)
    targets = np.arange(n) % 10
    with CounterfeitWriter(folder, method, f"r{seed}", {}, NAMES) as writer:
        for start in range(0, n, 64):  # several row groups, as `generate` writes them
            part = slice(start, start + 64)
            writer.write(counterfeit_batch(images[part], targets[part], targets[part], np.full(n, 0.995)[part],
                                           np.full(n, 3.0)[part], np.arange(n)[part], run_id=f"r{seed}",
                                           method=method, classifier_sha256="ab" * 32, seed=seed))
    return str(writer.path)


def test_small_sets_are_scored_in_process_unless_actors_are_asked_for():
    job = load_job(None, {})
    assert eval_actor_count(job, EVAL_IN_PROCESS_LIMIT - 1) == 0
    assert eval_actor_count(load_job(None, {"harden.eval_actors": "3"}), 10) == 3


@pytest.mark.slow
def test_held_out_and_real_ood_scores_on_ray_data_are_the_in_process_scores(tmp_path, ray_cluster, digits,
                                                                          digits_classifier_file):
    stores = [write_store(tmp_path / "a", "inversion", 300, 1), write_store(tmp_path / "b", "cppn", 200, 2)]
    job = load_job(None, {"harden.real_ood_per_set": "20"})
    scan = scan_pool(stores, digits.image_shape, digits.num_classes, 0.3, 0)
    model, _ = load_classifier(digits_classifier_file)
    here = score_sets_in_process(job, model, False, scan, "cpu")
    expected_sets = [HELD_OUT, f"{HELD_OUT}:cppn", f"{HELD_OUT}:inversion", "photo_patches", "letters"]
    assert list(here) == expected_sets and len(here[HELD_OUT]["max_softmax"]) == scan.eval_rows
    on_ray = {actors: score_sets_on_ray(job, digits_classifier_file, scan, actors, use_gpu=False)
              for actors in (1, 2)}
    for actors, scores in on_ray.items():
        assert list(scores) == expected_sets, actors
        for name, by_score in here.items():
            assert list(scores[name]) == list(by_score) == ["max_softmax", "max_logit", "negative_energy"]
            for score, values in by_score.items():
                # the same rows in the same order; only the batches differ (float rounding at most)
                np.testing.assert_allclose(scores[name][score], values, rtol=0, atol=1e-5, err_msg=f"{name} {score}")
                assert scores[name][score].dtype == np.float32
    for name, by_score in on_ray[1].items():  # the number of actors changes nothing
        for score, values in by_score.items():
            assert np.array_equal(on_ray[2][name][score], values), (name, score)
    logits_in = model(digits.test_images).detach()
    figures = [evaluation_from_scores(1.0, "max_softmax", False, row_scores(logits_in, False), scores).metrics
               for scores in (here, on_ray[2])]
    for name, by_score in figures[0].items():
        for score, metrics in by_score.items():
            for metric, value in metrics.items():
                assert abs(figures[1][name][score][metric] - value) < 1e-6, (name, score, metric)


@pytest.mark.slow
def test_the_re_attack_on_ray_data_judges_the_samples_the_driver_judges(tmp_path, ray_cluster, digits,
                                                                       digits_classifier_file, digits_generator_file):
    model, _ = load_classifier(digits_classifier_file)
    figures = {}
    for actors in (0, 2):  # in process, and two actors sharing the chunks
        job = load_job(None, {"generate.per_class": "6", "generate.batch_size": "16", "keep.confidence_bar": "0.2",
                              "generate.num_actors": str(actors), "generate.cpus_per_actor": "0.5"})
        far = fit_far_rule(job.far, digits, digits_classifier_file)
        figures[actors] = reattack_success(job, digits_generator_file, digits_classifier_file, model, False,
                                           "max_softmax", 0.3, far, torch.device("cpu"))
    assert figures[0]["samples"] == 60 and 0 < figures[0]["confident_share"] < 1
    assert figures[2] == figures[0]
