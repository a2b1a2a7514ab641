import pytest
import torch
from torch import nn

from ccc_ray.errors import CccError
from ccc_ray.counterfeits.far import PIXELS, FarFromData
from ccc_ray.hardening.adaptive import AdaptiveOutliers, hardest_outliers, pgd_toward_classes
from ccc_ray.methods.base import MethodContext
from ccc_ray.methods.inversion import InversionConfig, NetworkInversion

torch.set_num_threads(1)
SHAPE = (1, 4, 4)
K = 3


def tiny_classifier(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, K + 1))


def far_from_zeros(radius: float) -> FarFromData:
    """The far rule with an all-zero training set: far = L2 norm >= radius."""
    return FarFromData(PIXELS, radius, 95.0, torch.zeros(3, 16))


def test_hardest_outliers_are_those_the_classifier_rejects_least():
    logits = torch.zeros(4, K + 1)
    logits[:, -1] = torch.tensor([3.0, -2.0, 0.0, -5.0])  # reject logits
    assert sorted(hardest_outliers(logits, 2).tolist()) == [1, 3]
    assert len(hardest_outliers(logits, 10)) == 4
    with pytest.raises(CccError, match="K \\+ 1"):
        hardest_outliers(torch.zeros(4, 2), 1)


def test_pgd_raises_the_target_probability_within_the_ball_and_range():
    model = tiny_classifier()
    images = torch.rand(8, *SHAPE, generator=torch.Generator().manual_seed(0))
    targets = torch.arange(8) % K
    before = model(images).log_softmax(1).gather(1, targets[:, None]).sum()
    moved = pgd_toward_classes(model, images, targets, steps=5, epsilon=0.1)
    after = model(moved).log_softmax(1).gather(1, targets[:, None]).sum()
    assert after > before
    assert (moved - images).abs().max() <= 0.1 + 1e-6
    assert moved.min() >= 0 and moved.max() <= 1
    assert not moved.requires_grad and all(p.grad is None for p in model.parameters())
    assert torch.equal(pgd_toward_classes(model, images, targets, steps=0, epsilon=0.1), images)


def adaptive_outliers(model, attacker_steps=1, far=0.0, counterfeits=None, pgd_steps=2, mine_pool=2):
    context = MethodContext(SHAPE, K, model, "cpu", 0.99)
    inversion = NetworkInversion(InversionConfig(seed=0, latent_dim=4, embed_dim=4, base_channels=8), context)
    counterfeits = torch.rand(5, *SHAPE) if counterfeits is None else counterfeits
    return AdaptiveOutliers(inversion, counterfeits, SHAPE, far_from_zeros(far), count=6, mine_pool=mine_pool,
                            attacker_steps=attacker_steps, pgd_steps=pgd_steps, pgd_epsilon=0.05)


def test_attacker_steps_train_the_generator_and_leave_the_classifier_alone():
    model = tiny_classifier()
    model.train()
    source = adaptive_outliers(model, attacker_steps=2)
    generator_before = [p.clone() for p in source.inversion.generator.parameters()]
    classifier_before = [p.clone() for p in model.parameters()]
    outliers = source.outliers(model, torch.Generator().manual_seed(0), "cpu")
    assert outliers.shape == (6, *SHAPE)  # far 0: every mined outlier is kept
    assert source.inversion.step == 2
    assert any(not torch.equal(a, b) for a, b in zip(generator_before, source.inversion.generator.parameters()))
    assert all(torch.equal(a, b) and b.grad is None for a, b in zip(classifier_before, model.parameters()))
    assert model.training and all(p.requires_grad for p in model.parameters())  # modes restored


def test_only_far_outliers_are_returned():
    model = tiny_classifier()
    # The training set is all zeros; far = 3.5 leaves only images with a large norm.
    source = adaptive_outliers(model, attacker_steps=0, far=3.5, pgd_steps=0, mine_pool=1,
                               counterfeits=torch.ones(5, *SHAPE))
    outliers = source.outliers(model, torch.Generator().manual_seed(0), "cpu")
    assert len(outliers) <= 6
    assert len(outliers) and bool((outliers.flatten(1).norm(dim=1) >= 3.5).all())


def test_outliers_are_seeded_and_the_attacker_state_round_trips():
    model = tiny_classifier()
    a = adaptive_outliers(model).outliers(model, torch.Generator().manual_seed(3), "cpu")
    first = adaptive_outliers(model)
    b = first.outliers(model, torch.Generator().manual_seed(3), "cpu")
    assert torch.equal(a, b)
    second = adaptive_outliers(model)
    second.load_state_dict(first.state_dict())
    assert second.inversion.step == first.inversion.step
    for p, q in zip(first.inversion.generator.parameters(), second.inversion.generator.parameters()):
        assert torch.equal(p, q)


def test_bad_settings_are_refused():
    with pytest.raises(CccError, match="mine_pool"):
        AdaptiveOutliers(None, torch.rand(2, *SHAPE), SHAPE, far_from_zeros(0.0), count=4, mine_pool=0,
                         attacker_steps=0, pgd_steps=0, pgd_epsilon=0.1)


def test_adaptive_mode_scores_with_its_reject_class():
    from ccc_ray.job import load_job

    assert load_job(None, {"harden.mode": "adaptive"}).harden.score == "not_reject"
    with pytest.raises(CccError, match="reject class"):
        load_job(None, {"harden.mode": "oe", "harden.ood_score": "not_reject"})
