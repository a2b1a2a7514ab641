import math

import pytest
import torch
import torch.nn.functional as F

from ccc_ray.errors import CccError
from ccc_ray.hardening.losses import (balanced_class_weights, outlier_exposure_loss, reject_class_loss,
                                      uniform_cross_entropy)

torch.set_num_threads(1)


def test_balanced_weights_give_the_reject_class_the_weight_of_one_class():
    weights = balanced_class_weights(torch.tensor([10, 10, 40]))
    assert torch.allclose(weights, torch.tensor([2.0, 2.0, 0.5]))
    counts = torch.tensor([10.0, 10.0, 40.0])
    assert torch.allclose(weights * counts, torch.full((3,), 20.0))  # equal total weight per class
    assert balanced_class_weights(torch.tensor([5, 0, 5]))[1] == 0  # an absent class gets none
    with pytest.raises(CccError, match="all zero"):
        balanced_class_weights(torch.zeros(3))
    with pytest.raises(CccError, match="non-negative"):
        balanced_class_weights(torch.tensor([3, -1]))


def test_reject_class_loss_counts_many_counterfeits_as_one_class():
    # K = 2: one image per real class and 8 counterfeits; every real row has loss a, every counterfeit b.
    targets = torch.tensor([0, 1] + [2] * 8)
    logits = torch.zeros(10, 3)
    logits[0, 0] = logits[1, 1] = 1.0  # a = -log softmax([1, 0, 0])[0]
    logits[2:, 2] = 3.0  # b = -log softmax([0, 0, 3])[2]
    a = -F.log_softmax(torch.tensor([1.0, 0.0, 0.0]), 0)[0]
    b = -F.log_softmax(torch.tensor([0.0, 0.0, 3.0]), 0)[2]
    weights = balanced_class_weights(torch.bincount(targets, minlength=3))
    assert torch.allclose(reject_class_loss(logits, targets, weights), (2 * a + b) / 3)
    # Unweighted, the counterfeits would make up 8/10 of the loss.
    assert torch.allclose(reject_class_loss(logits, targets, torch.ones(3)), (2 * a + 8 * b) / 10)


def test_reject_class_loss_gradient_raises_the_reject_logit_of_counterfeits():
    logits = torch.zeros(4, 4, requires_grad=True)
    targets = torch.tensor([0, 1, 3, 3])
    reject_class_loss(logits, targets, balanced_class_weights(torch.tensor([1, 1, 0, 2]))).backward()
    assert (logits.grad[2:, 3] < 0).all()  # descent raises the reject logit of counterfeits
    assert (logits.grad[:2, 3] > 0).all()  # and lowers it on real images
    assert logits.grad[0, 0] < 0 and logits.grad[1, 1] < 0


def test_reject_class_loss_checks_shapes():
    with pytest.raises(CccError, match="class weights"):
        reject_class_loss(torch.zeros(2, 4), torch.tensor([0, 3]), torch.ones(3))
    with pytest.raises(CccError, match="targets"):
        reject_class_loss(torch.zeros(2, 4), torch.tensor([0, 3, 1]), torch.ones(4))


def test_uniform_cross_entropy_is_smallest_and_flat_at_the_uniform_softmax():
    flat = torch.full((3, 5), 2.0, requires_grad=True)
    loss = uniform_cross_entropy(flat)
    loss.backward()
    assert loss.item() == pytest.approx(math.log(5))
    assert torch.allclose(flat.grad, torch.zeros(3, 5))
    peaked = torch.tensor([[6.0, 0.0, 0.0, 0.0, 0.0]])
    assert uniform_cross_entropy(peaked) > math.log(5)
    expected = -F.log_softmax(peaked, dim=1).mean()
    assert torch.allclose(uniform_cross_entropy(peaked), expected)


def test_outlier_exposure_adds_lambda_times_the_uniform_term():
    in_logits, in_targets = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    outliers = torch.randn(8, 3)
    plain = F.cross_entropy(in_logits, in_targets)
    assert torch.allclose(outlier_exposure_loss(in_logits, in_targets, outliers),
                          plain + 0.5 * uniform_cross_entropy(outliers))
    assert torch.allclose(outlier_exposure_loss(in_logits, in_targets, outliers, outlier_weight=0.0), plain)
    assert torch.allclose(outlier_exposure_loss(in_logits, in_targets, torch.zeros(0, 3)), plain)
    with pytest.raises(CccError, match="same K"):
        outlier_exposure_loss(in_logits, in_targets, torch.zeros(2, 4))


def _train(outlier_weight: float) -> tuple[float, float]:
    """Accuracy and mean outlier max-softmax of a linear classifier after 200 steps, same data and init."""
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(30, 6, generator=generator)
    targets = torch.arange(30) % 3
    inputs[torch.arange(30), targets] += 3.0  # well separated in-distribution data
    outliers = torch.randn(60, 6, generator=generator) * 3.0
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(200):
        optimizer.zero_grad()
        outlier_exposure_loss(model(inputs), targets, model(outliers), outlier_weight=outlier_weight).backward()
        optimizer.step()
    with torch.no_grad():
        accuracy = (model(inputs).argmax(1) == targets).float().mean().item()
        return accuracy, model(outliers).softmax(1).amax(1).mean().item()


def test_outlier_exposure_training_flattens_outliers_and_keeps_the_classes():
    plain_accuracy, plain_outlier_confidence = _train(outlier_weight=0.0)
    oe_accuracy, oe_outlier_confidence = _train(outlier_weight=0.5)
    assert oe_accuracy >= plain_accuracy - 0.05 and oe_accuracy >= 0.9
    assert oe_outlier_confidence < plain_outlier_confidence - 0.2
