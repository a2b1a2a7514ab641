"""PGD under an L-infinity budget and accuracy under it, on a tiny linear model."""

import pytest
import torch
from torch import nn

from ccc_ray.errors import CccError
from ccc_ray.robustness import PgdSettings, accuracy_under_pgd, pgd_attack, robustness_table

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def problem():
    """Two classes told apart by mean brightness: a model that is right on clean images and easy to attack."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(64) % 2
    images = (0.35 + 0.3 * labels.float()[:, None, None, None] + 0.1 * torch.rand(64, 1, 4, 4, generator=generator))
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    with torch.no_grad():
        model[1].weight.copy_(torch.stack([-torch.ones(16), torch.ones(16)]))
        model[1].bias.copy_(torch.tensor([8.8, -8.8]))  # the boundary at mean brightness 0.55
    return model, images.clamp(0, 1), labels


def test_epsilon_zero_is_clean_accuracy(problem):
    model, images, labels = problem
    clean = float((model(images).argmax(1) == labels).float().mean())
    assert clean == 1.0
    assert accuracy_under_pgd(model, images, labels, 0.0) == clean


def test_larger_epsilon_never_raises_accuracy(problem):
    model, images, labels = problem
    rows = robustness_table(model, images, labels, [0.0, 0.05, 0.1, 0.2, 0.3], steps=10, seed=0)
    accuracies = [row["accuracy"] for row in rows]
    assert accuracies == sorted(accuracies, reverse=True)
    assert accuracies[0] == 1.0 and accuracies[-1] == 0.0
    assert [row["epsilon"] for row in rows] == [0.0, 0.05, 0.1, 0.2, 0.3]
    assert rows[1]["step_size"] == pytest.approx(2.5 * 0.05 / 10)


def test_adversarial_images_stay_in_range_and_within_epsilon(problem):
    model, images, labels = problem
    for epsilon in (0.03, 0.5):
        adversarial = pgd_attack(model, images, labels, epsilon, PgdSettings(steps=5),
                                 torch.Generator().manual_seed(0))
        assert adversarial.min() >= 0 and adversarial.max() <= 1
        assert (adversarial - images).abs().max() <= epsilon + 1e-6


def test_same_seed_same_attack_and_no_weight_gradients(problem):
    model, images, labels = problem
    first = pgd_attack(model, images, labels, 0.1, PgdSettings(steps=3), torch.Generator().manual_seed(4))
    second = pgd_attack(model, images, labels, 0.1, PgdSettings(steps=3), torch.Generator().manual_seed(4))
    assert torch.equal(first, second)
    assert all(p.grad is None for p in model.parameters())


def test_reject_output_counts_as_wrong():
    # A K + 1 model that sends everything to its last output: no image is "correct", attacked or not.
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.copy_(torch.tensor([0.0, 0.0, 5.0]))
    images, labels = torch.rand(6, 1, 2, 2), torch.arange(6) % 2
    assert accuracy_under_pgd(model, images, labels, 0.0) == 0.0


def test_bad_inputs_are_one_line_errors(problem):
    model, images, labels = problem
    with pytest.raises(CccError, match="epsilon"):
        accuracy_under_pgd(model, images, labels, -0.1)
    with pytest.raises(CccError, match="labels"):
        accuracy_under_pgd(model, images, labels[:3], 0.1)
    with pytest.raises(CccError, match=r"\[0, 1\]"):
        accuracy_under_pgd(model, images + 2, labels, 0.1)
    with pytest.raises(CccError, match="at least one epsilon"):
        robustness_table(model, images, labels, [])


def test_class_head_reading_leaves_the_reject_output_out():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.copy_(torch.tensor([1.0, 0.0, 5.0]))  # "reject" wins, class 0 is next
    images, labels = torch.rand(4, 1, 2, 2), torch.zeros(4, dtype=torch.long)
    assert robustness_table(model, images, labels, [0.0])[0]["accuracy"] == 0.0
    assert robustness_table(model, images, labels, [0.0], class_outputs=2)[0]["accuracy"] == 1.0
