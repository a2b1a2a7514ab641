"""PGD under an L-infinity budget and accuracy under it, on a tiny linear model."""

import pytest
import torch
from torch import nn

from ccc_ray.errors import CccError
from ccc_ray.robustness import (
    PgdSettings,
    accuracy_under_pgd,
    pgd_attack,
    pgd_outcomes,
    robustness_table,
    wrong_class_loss,
)

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


def test_wrong_class_loss_is_the_log_probability_of_the_other_real_classes():
    logits = torch.tensor([[2.0, 0.0, 1.0, 3.0], [0.0, 1.0, 0.0, -1.0]])  # K = 3, "fake" last
    labels = torch.tensor([0, 2])
    p = logits.softmax(dim=1)
    expected = torch.log(p[0, 1] + p[0, 2]) + torch.log(p[1, 0] + p[1, 1])
    assert float(wrong_class_loss(3)(logits, labels)) == pytest.approx(float(expected), rel=1e-6)


def reject_shortcut_model(two_class: nn.Module) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A K + 1 model whose reject output is the easy way out: a checkerboard raises it, brightness does not."""
    labels = torch.arange(32) % 2
    images = (0.4 + 0.3 * labels.float())[:, None, None, None].expand(32, 1, 4, 4).clone()  # flat: no checkerboard
    checker = ((torch.arange(4)[:, None] + torch.arange(4)[None]) % 2 * 2 - 1).float().flatten()
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    with torch.no_grad():
        model[1].weight.copy_(torch.cat([two_class[1].weight, 40 * checker[None]]))
        model[1].bias.copy_(torch.cat([two_class[1].bias, torch.tensor([-4.0])]))
    return model, images, labels


def test_the_wrong_class_attack_avoids_the_reject_output_the_cross_entropy_attack_takes(problem):
    model, images, labels = reject_shortcut_model(problem[0])
    assert (model(images).argmax(1) == labels).all()
    settings = PgdSettings(steps=10, random_start=False)
    cross_entropy = pgd_attack(model, images, labels, 0.2, settings)
    wrong = pgd_attack(model, images, labels, 0.2, settings, loss_fn=wrong_class_loss(2))
    assert (model(cross_entropy).argmax(1) == 2).all()  # the true-class attack ends in "reject"
    assert torch.equal(model(wrong).argmax(1), 1 - labels)  # the wrong-class attack in the other class
    assert (wrong - images).abs().max() <= 0.2 + 1e-6


def test_outcomes_split_each_threat_model_into_correct_rejected_and_wrong(problem):
    model, images, labels = reject_shortcut_model(problem[0])
    settings = PgdSettings(steps=10, random_start=False)
    clean = pgd_outcomes(model, images, labels, 0.0, 2, "all_outputs", settings)
    assert clean == {"correct": 1.0, "rejected": 0.0, "wrong": 0.0, "class_head": 1.0}
    all_outputs = pgd_outcomes(model, images, labels, 0.2, 2, "all_outputs", settings)
    assert all_outputs["rejected"] == 1.0 and all_outputs["class_head"] == 1.0  # rejected, the class kept
    wrong = pgd_outcomes(model, images, labels, 0.2, 2, "wrong_class", settings)
    assert wrong["wrong"] == 1.0 and wrong["rejected"] == 0.0
    head = pgd_outcomes(model, images, labels, 0.2, 2, "class_head", settings)
    assert head["class_head"] == 0.0
    for shares in (clean, all_outputs, wrong, head):
        assert shares["correct"] + shares["rejected"] + shares["wrong"] == pytest.approx(1.0)
    with pytest.raises(CccError, match="robustness.attack"):
        pgd_outcomes(model, images, labels, 0.1, 2, "fake_only")
