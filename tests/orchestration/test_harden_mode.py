"""`harden.mode auto`: reject behind the data guard where the guard applies, adaptive where it does not."""

import pytest

from ccc_ray.classifiers.build import ClassifierConfig, build_classifier
from ccc_ray.classifiers.guard import ClassDataGuard, DataGuard
from ccc_ray.classifiers.widen import widen_classifier
from ccc_ray.errors import CccError
from ccc_ray.job import load_job
from ccc_ray.orchestration.harden_classifier import guard_applies, guarded, hardening_parts, with_concrete_mode


@pytest.mark.parametrize("overrides, shape, mode, guarded", [
    ({}, (1, 8, 8), "reject", True),  # digits: pixel space, the (class-aware) guard applies
    ({}, (3, 32, 32), "adaptive", False),  # 3,072 values: above far.auto_pixel_limit, no guard
    ({"harden.guard": "off"}, (1, 8, 8), "adaptive", False),
    ({"harden.guard": "pixels"}, (3, 32, 32), "reject", True),
    ({"harden.guard": "class_pixels"}, (3, 32, 32), "reject", True),
    ({"harden.mode": "adaptive"}, (1, 8, 8), "adaptive", True),  # an explicit mode is kept
    ({"harden.mode": "oe", "harden.guard": "off"}, (1, 8, 8), "oe", False),
])
def test_auto_mode_follows_the_guard(overrides, shape, mode, guarded):
    job = load_job(None, overrides)
    assert job.harden.mode == overrides.get("harden.mode", "auto")
    assert with_concrete_mode(job, shape).harden.mode == mode
    assert guard_applies(job, shape) is guarded


def test_an_unresolved_auto_mode_never_trains(digits):
    with pytest.raises(CccError, match="auto"):
        hardening_parts(load_job(None, {}).harden, None, digits, None, None, "cpu")


def test_the_pool_window_is_a_memory_budget_unless_set():
    harden = load_job(None, {}).harden
    assert harden.pool_window((1, 8, 8)) == 256 * 2**20 // 64  # reject's whole pool fits for digits
    assert harden.pool_window((3, 224, 224)) == 256 * 2**20 // (3 * 224 * 224)
    assert load_job(None, {"harden.pool_rows_per_worker": 100}).harden.pool_window((1, 8, 8)) == 100


@pytest.mark.parametrize("setting, kind", [("auto", ClassDataGuard), ("pixels", DataGuard), ("off", None)])
def test_the_hardened_model_gets_the_guard_the_option_names(digits, setting, kind):
    job = with_concrete_mode(load_job(None, {"harden.guard": setting}), digits.image_shape)
    model = widen_classifier(build_classifier(ClassifierConfig(), digits.image_shape, 10), digits.image_shape)
    wrapped = guarded(job, model.eval(), digits)
    assert type(wrapped) is kind if kind else wrapped is model


def test_adversarial_reals_join_the_batch_as_reject_within_epsilon(digits):
    import torch

    from ccc_ray.orchestration.harden_classifier import with_adversarial_reals

    model = widen_classifier(build_classifier(ClassifierConfig(), digits.image_shape, 10), digits.image_shape)
    cfg = load_job(None, {"harden.adversarial_reals": 0.5, "harden.pgd_steps": 3}).harden
    images, labels = digits.train_images[:20], digits.train_labels[:20].clone()
    labels[:4] = 10  # counterfeit rows of the batch are never perturbed
    out_images, out_labels = with_adversarial_reals(model, images, labels, 10, cfg, torch.Generator().manual_seed(0))
    assert torch.equal(out_images[:20], images) and torch.equal(out_labels[:20], labels)
    assert len(out_images) == 20 + 8 and (out_labels[20:] == 10).all()
    moved = out_images[20:]
    sources = torch.stack([min(images[4:], key=lambda real: float((real - m).abs().max())) for m in moved])
    assert float((moved - sources).abs().max()) <= 0.3 + 1e-6 and float((moved - sources).abs().max()) > 0.05
    assert moved.min() >= 0 and moved.max() <= 1
    # the same generator seed moves the same rows the same way
    again = with_adversarial_reals(model, images, labels, 10, cfg, torch.Generator().manual_seed(0))
    assert torch.equal(again[0], out_images)
