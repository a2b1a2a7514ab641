import numpy as np
import pytest
import torch

from ccc_ray.errors import CccError
from ccc_ray.ood.metrics import OODMetrics, acceptance_threshold, clean_accuracy, ood_metrics

torch.set_num_threads(1)


def test_perfect_separation():
    result = ood_metrics(torch.tensor([0.9, 0.8, 0.95]), torch.tensor([0.1, 0.3]))
    assert result["auroc"] == 1.0 and result["aupr_in"] == 1.0 and result["aupr_out"] == 1.0
    assert result["fpr95"] == 0.0
    assert result["threshold95"] == pytest.approx(0.8)  # accepting all three in-distribution scores
    assert (result["num_in"], result["num_out"]) == (3, 2)


def test_reversed_scores_are_the_worst_case():
    result = ood_metrics(torch.tensor([0.1, 0.2]), torch.tensor([0.8, 0.9]))
    assert result["auroc"] == 0.0 and result["fpr95"] == 1.0


def test_hand_computed_case():
    result = ood_metrics(np.array([0.9, 0.8, 0.7, 0.6]), np.array([0.75, 0.5]))
    assert result["auroc"] == pytest.approx(6 / 8)  # in > out in 6 of the 8 pairs
    # Ranked 0.9 in, 0.8 in, 0.75 out, 0.7 in, 0.6 in, 0.5 out: precision at each positive.
    assert result["aupr_in"] == pytest.approx((1 + 1 + 3 / 4 + 4 / 5) / 4)
    assert result["aupr_out"] == pytest.approx((1 + 2 / 4) / 2)
    assert result["threshold95"] == 0.6  # 95% of 4 images needs all 4
    assert result["fpr95"] == 0.5  # 0.75 accepted, 0.5 rejected


def test_identical_distributions_are_chance():
    rng = np.random.default_rng(0)
    result = ood_metrics(rng.normal(size=4000), rng.normal(size=4000))
    assert result["auroc"] == pytest.approx(0.5, abs=0.03)
    assert result["fpr95"] == pytest.approx(0.95, abs=0.02)
    tied = ood_metrics(np.full(10, 0.3), np.full(10, 0.3))
    assert tied["auroc"] == 0.5 and tied["fpr95"] == 1.0


def test_threshold_from_in_distribution_alone_matches_fpr95():
    rng = np.random.default_rng(1)
    scores_in, scores_out = rng.normal(1.0, size=203), rng.normal(size=150)
    result = ood_metrics(scores_in, scores_out)
    threshold = acceptance_threshold(scores_in)
    assert threshold == result["threshold95"]
    assert np.mean(scores_in >= threshold) >= 0.95
    assert np.mean(scores_in >= np.nextafter(threshold, np.inf)) < 0.95  # the largest such threshold
    assert result["fpr95"] == pytest.approx(np.mean(scores_out >= threshold))
    # 95% of 20 is exactly 19 images, not 20.
    assert acceptance_threshold(np.arange(20.0)) == 1.0
    assert acceptance_threshold(np.arange(20.0), tpr=1.0) == 0.0


def test_empty_group_or_bad_scores_are_clear_errors():
    with pytest.raises(CccError, match="OOD group is empty"):
        ood_metrics(torch.tensor([0.5, 0.6]), torch.tensor([]))
    with pytest.raises(CccError, match="in-distribution group is empty"):
        ood_metrics(torch.tensor([]), torch.tensor([0.5]))
    with pytest.raises(CccError, match="NaN"):
        ood_metrics(torch.tensor([0.5, float("nan")]), torch.tensor([0.1]))
    with pytest.raises(CccError, match="1-D"):
        ood_metrics(torch.zeros(2, 2), torch.tensor([0.1]))
    with pytest.raises(CccError, match="empty"):
        OODMetrics().compute()


def test_streaming_accumulator_equals_one_shot():
    rng = np.random.default_rng(2)
    scores = torch.from_numpy(rng.normal(size=300))
    is_in = torch.from_numpy(rng.random(300) < 0.6)
    scores[is_in] += 1.0
    metrics = OODMetrics()
    for start in range(0, 300, 64):
        metrics.update(scores[start:start + 64], is_in[start:start + 64])
    metrics.update(torch.tensor([2.5, 2.6]), True)  # one flag for a whole batch
    metrics.update(torch.tensor([-0.5]), False)
    expected = ood_metrics(torch.cat([scores[is_in], torch.tensor([2.5, 2.6])]),
                           torch.cat([scores[~is_in], torch.tensor([-0.5])]))
    assert metrics.compute() == expected
    metrics.reset()
    metrics.update(torch.tensor([1.0]), True)
    metrics.update(torch.tensor([0.0]), False)
    assert metrics.compute()["num_in"] == 1
    with pytest.raises(CccError, match="2 scores but 3"):
        metrics.update(torch.tensor([1.0, 2.0]), torch.tensor([True, False, True]))


def test_clean_accuracy_counts_rejections_as_errors():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0], [2.0, 0.0, 0.0]])
    targets = torch.tensor([0, 1, 1, 1])
    assert clean_accuracy(logits, targets) == 0.5  # row 2 went to output 2 (the reject class, if any)
    with pytest.raises(CccError, match="targets N"):
        clean_accuracy(logits, targets[:2])
