"""ccc_ray/evaluate.py: the figures built from per-row values (scores, verdicts) are the figures of the
whole-set functions, so the rows can be scored anywhere, in any batches."""

import numpy as np
import torch

from ccc_ray.classifiers.weights import load_classifier
from ccc_ray.counterfeits.generate import sample_plan
from ccc_ray.evaluate import (REATTACK_SEED_OFFSET, AttackJudgement, attack_chunk_seed, attack_shares,
                              attack_success_rate, evaluate_classifier, evaluation_from_scores, judge_attack_chunk,
                              row_scores, score_images)
from ccc_ray.methods.generator_file import load_generator

torch.set_num_threads(1)


def test_scores_of_batches_give_the_figures_of_the_whole_sets(digits, digits_classifier_file):
    model, _ = load_classifier(digits_classifier_file)
    noise = torch.rand(90, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    sets = {"noise": noise, "dark": noise * 0.2}
    whole = evaluate_classifier(model, False, digits.test_images, digits.test_labels, sets, "not_reject")
    # Each set scored in two batches, as Ray Data actors would, then judged from the scores alone.
    batched = {name: {score: np.concatenate([part[score] for part in (score_images(model, images[:31], False),
                                                                        score_images(model, images[31:], False))])
                      for score in whole.scores_out[name]} for name, images in sets.items()}
    logits_in = model(digits.test_images).detach()
    from_scores = evaluation_from_scores(whole.clean_accuracy, "not_reject", False, row_scores(logits_in, False),
                                         batched)
    assert from_scores.primary_score == whole.primary_score == "max_softmax"  # no reject output to read
    assert list(from_scores.metrics) == list(whole.metrics) == ["noise", "dark"]
    for name, by_score in whole.metrics.items():
        for score, metrics in by_score.items():
            for metric, value in metrics.items():
                assert abs(from_scores.metrics[name][score][metric] - value) < 1e-6, (name, score, metric)
    assert abs(from_scores.ood_threshold - whole.ood_threshold) < 1e-6


def test_the_re_attack_s_first_chunk_is_the_sample_it_was_before_chunks(digits, digits_classifier_file,
                                                                         digits_generator_file):
    model, _ = load_classifier(digits_classifier_file)
    method, _ = load_generator(digits_generator_file)
    per_class, seed = 12, 1
    targets = torch.arange(10).repeat_interleave(per_class)
    images = method.sample_with_lineage(targets, seed + REATTACK_SEED_OFFSET, digits).images
    before = attack_success_rate(model, False, images, targets, "max_softmax", 0.3, 0.2)
    judged = judge_attack_chunk(method, model, digits, per_class, 0, 0, len(targets), seed=seed, reject_class=False,
                                score="max_softmax", ood_threshold=0.3, confidence_bar=0.2)
    assert attack_shares(judged, False) == before
    assert 0 < before["confident_share"] < 1  # a figure that could have moved
    # In several chunks: each chunk its own seed, the whole the verdicts of its chunks in plan order.
    plan = sample_plan(10, per_class, 50)
    chunks = [judge_attack_chunk(method, model, digits, per_class, chunk, start, stop, seed=seed, reject_class=False,
                                 score="max_softmax", ood_threshold=0.3, confidence_bar=0.2)
              for chunk, start, stop in plan]
    assert [len(chunk.confident) for chunk in chunks] == [50, 50, 20]
    whole = AttackJudgement.concatenate(chunks)
    assert len(whole.confident) == 120 and whole.far.all()  # no far rule: every sample counts as far
    assert attack_shares(whole, False)["samples"] == 120
    assert len({attack_chunk_seed(seed, chunk) for chunk in range(1000)}) == 1000
