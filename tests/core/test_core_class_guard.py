"""The class-aware data guard: confidence in class k only near class-k training images, saved and exported."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ccc_ray.classifiers.build import ClassifierConfig, build_classifier
from ccc_ray.classifiers.guard import ClassDataGuard, DataGuard, empty_guard
from ccc_ray.classifiers.weights import load_classifier, save_classifier
from ccc_ray.classifiers.widen import widen_classifier
from ccc_ray.errors import CccError
from ccc_ray.export.onnx_export import check_parity, export_onnx
from ccc_ray.job import load_job
from ccc_ray.orchestration.harden_classifier import guard_kind

torch.set_num_threads(1)
NAMES = [str(i) for i in range(10)]
SHAPE = (1, 2, 2)


class Always(nn.Module):
    """Answers class `k` at > 0.999 whatever the image: the model a guard must overrule."""

    def __init__(self, k: int, width: int):
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(width).index_fill(0, torch.tensor([k]), 12.0))

    def forward(self, images):
        return self.logits.expand(len(images), -1) + 0 * images.flatten(1).sum(1, keepdim=True)


def clusters(per_class=6, seed=0):
    """Three classes of 2x2 images, each a tight cluster around its own corner of the unit cube."""
    centres = torch.tensor([[0.1, 0.1, 0.1, 0.1], [0.9, 0.9, 0.1, 0.1], [0.1, 0.1, 0.9, 0.9]])
    noise = torch.rand(3, per_class, 4, generator=torch.Generator().manual_seed(seed)) * 0.1
    images = (centres[:, None] + noise).reshape(-1, *SHAPE)
    return images, torch.arange(3).repeat_interleave(per_class)


@pytest.mark.parametrize("reject_class", [True, False])
def test_confident_only_in_the_class_whose_training_images_are_near(reject_class):
    images, labels = clusters()
    width = 3 + int(reject_class)
    for j in range(3):
        on_class_j = images[labels == j]
        for k in range(3):
            guard = ClassDataGuard.fit(Always(k, width), images, labels, 90, 99.9, 0.98, reject_class).eval()
            with torch.no_grad():
                p = guard(on_class_j).softmax(1)[:, k]
            if k == j:  # a class-j training image keeps its class answer
                assert (p >= 0.99).all()
            else:  # near class j only: class k cannot be confident
                assert (p <= 0.98 + 1e-6).all()
        # today's guard lets the wrong answer through: the image is near the data (of another class)
        wrong = DataGuard.fit(Always((j + 1) % 3, width), images, 90, 99.9, 0.98, reject_class).eval()
        with torch.no_grad():
            assert (wrong(on_class_j).softmax(1)[:, (j + 1) % 3] >= 0.99).all()


def test_far_images_stay_below_the_cap_in_every_class(digits):
    torch.manual_seed(0)
    layer = nn.Linear(64, 10)
    with torch.no_grad():
        layer.weight.mul_(200.0)  # confident (> 0.99) almost everywhere: the case a guard exists for
    model = widen_classifier(nn.Sequential(nn.Flatten(), layer), digits.image_shape).eval()
    guard = ClassDataGuard.fit(model, digits.train_images, digits.train_labels, 90, 99.9, 0.98, True).eval()
    noise = torch.rand(200, *digits.image_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert guard.classifier(noise).softmax(1)[:, :-1].max() > 0.99  # the plain model is fooled
        p = guard(noise).softmax(1)
    assert p[:, :-1].max() <= 0.98 + 1e-6 and (p.argmax(1) == 10).float().mean() > 0.95
    assert torch.allclose(p.sum(1), torch.ones(len(p)))


def test_probabilities_sum_to_one_without_a_reject_class_and_far_is_near_uniform():
    images, labels = clusters()
    guard = ClassDataGuard.fit(Always(1, 3), images, labels, 90, 99.9, 0.98, False).eval()
    with torch.no_grad():
        p = guard(torch.full((4, *SHAPE), 5.0)).softmax(1)  # far from every cluster
    assert torch.allclose(p.sum(1), torch.ones(4)) and (p - 1 / 3).abs().max() < 1e-3


def test_the_guard_is_differentiable_toward_the_class_data():
    images, labels = clusters()
    guard = ClassDataGuard.fit(Always(1, 4), images, labels, 90, 99.9, 0.98, True).eval()
    x = images[labels == 0][:2].clone().requires_grad_(True)
    guard(x).log_softmax(1)[:, 1].sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_saved_class_guard_loads_back_and_exports_with_parity(tmp_path, digits):
    config = ClassifierConfig()
    model = widen_classifier(build_classifier(config, digits.image_shape, 10), digits.image_shape).eval()
    guard = ClassDataGuard.fit(model, digits.train_images, digits.train_labels, 90, 99.9, 0.98, True).eval()
    info = save_classifier(tmp_path / "c.safetensors", guard, config, digits.image_shape, NAMES, "digits", True)
    assert info.guard["kind"] == "class_pixels" and info.guard["classes"] == 10
    loaded, loaded_info = load_classifier(tmp_path / "c.safetensors", digits.image_shape, 10)
    assert isinstance(loaded, ClassDataGuard) and loaded_info.sha256 == info.sha256
    assert loaded_info.guard["edge_distances"] == pytest.approx(guard.guard_constants[:, 0].tolist())
    images = torch.cat([digits.test_images[:32], torch.rand(32, *digits.image_shape)])
    with torch.no_grad():
        assert torch.equal(loaded(images), guard(images))
    export_onnx(loaded, tmp_path / "c.onnx", NAMES, digits.image_shape, "not_reject", 0.5, True)
    assert check_parity(loaded, tmp_path / "c.onnx", images) <= 1e-5


def test_bad_inputs_are_refused():
    images, labels = clusters()
    with pytest.raises(CccError, match="at least 2 training images"):
        ClassDataGuard.fit(Always(0, 3), images[:13], labels[:13], 90, 99.9, 0.98, False)  # class 2: one image
    with pytest.raises(CccError, match="at least 2 training images"):
        ClassDataGuard.fit(Always(0, 4), images, labels * 2, 90, 99.9, 0.98, True)  # class 1: none
    with pytest.raises(CccError, match="outputs"):
        ClassDataGuard.fit(Always(0, 3), images, labels, 90, 99.9, 0.98, True)  # no reject output to fill
    with pytest.raises(CccError, match="one label per training image"):
        ClassDataGuard.fit(Always(0, 3), images, labels[:5], 90, 99.9, 0.98, False)
    with pytest.raises(CccError, match="edge percentile"):
        ClassDataGuard.fit(Always(0, 3), images, labels, 99.9, 90, 0.98, False)
    with pytest.raises(CccError, match="unknown kind"):
        empty_guard(Always(0, 3), {"kind": "features", "reference_images": 4, "values_per_image": 4}, False)


@pytest.mark.parametrize("setting, shape, kind", [
    ("auto", (1, 8, 8), "class_pixels"),  # pixel space: the class-aware guard
    ("auto", (3, 32, 32), None),  # above far.auto_pixel_limit: none
    ("class_pixels", (3, 32, 32), "class_pixels"),
    ("pixels", (1, 8, 8), "pixels"),  # today's guard, on request
    ("off", (1, 8, 8), None),
])
def test_the_guard_option_selects_the_kind(setting, shape, kind):
    assert guard_kind(load_job(None, {"harden.guard": setting}), shape) == kind


def test_an_unknown_guard_option_is_refused():
    with pytest.raises(CccError, match="class_pixels"):
        load_job(None, {"harden.guard": "classes"})


def test_sharpening_reaches_the_confident_share_on_training_images_and_is_saved(tmp_path, digits,
                                                                              digits_classifier_file):
    trained, info = load_classifier(digits_classifier_file)
    config = info.config
    with torch.no_grad():  # right but timid: the last layer's logits a tenth of the trained ones
        last = [module for module in trained.modules() if isinstance(module, nn.Linear)][-1]
        last.weight.mul_(0.1)
        last.bias.mul_(0.1)
    model = widen_classifier(trained, digits.image_shape).eval()
    guard = ClassDataGuard.fit(model, digits.train_images, digits.train_labels, 90, 99.9, 0.98, True).eval()
    before = save_classifier(tmp_path / "before.safetensors", guard, config, digits.image_shape, NAMES, "digits",
                             True)
    with torch.no_grad():
        own = guard(digits.train_images).softmax(1).gather(1, digits.train_labels[:, None])
    assert float((own >= 0.99).double().mean()) < 0.1
    guard.sharpen(digits.train_images, digits.train_labels, 0.99, 0.3)
    assert 0.05 <= float(guard.temperature) < 1
    with torch.no_grad():
        own = guard(digits.train_images).softmax(1).gather(1, digits.train_labels[:, None])
    # On its training images the guard weighs 1, so the share it was fitted to holds there, and only just.
    assert 0.3 <= float((own >= 0.99).double().mean()) < 0.32
    info = save_classifier(tmp_path / "c.safetensors", guard, config, digits.image_shape, NAMES, "digits", True)
    assert info.guard["temperature"] == pytest.approx(float(guard.temperature))
    assert info.sha256 != before.sha256  # the temperature is part of what the fingerprint covers
    loaded, _ = load_classifier(tmp_path / "c.safetensors", digits.image_shape, 10)
    with torch.no_grad():
        assert torch.equal(loaded(digits.test_images), guard(digits.test_images))
    export_onnx(loaded, tmp_path / "c.onnx", NAMES, digits.image_shape, "not_reject", 0.5, True)
    assert check_parity(loaded, tmp_path / "c.onnx", digits.test_images) <= 1e-5
    with pytest.raises(CccError, match="confident share"):
        guard.sharpen(digits.train_images, digits.train_labels, 0.99, 1.0)


def test_the_margin_rule_refuses_confidence_halfway_between_two_classes(tmp_path):
    """Two overlapping clusters: the point between them is within both classes' edge, so the distance rule
    lets either answer through; the margin rule asks it to be clearly nearer to the class it names."""
    generator = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.45] * 4, [0.55] * 4])
    images = (centres[:, None] + 0.1 * torch.rand(2, 30, 4, generator=generator) - 0.05).reshape(-1, *SHAPE)
    labels = torch.arange(2).repeat_interleave(30)
    between = centres.mean(0).reshape(1, *SHAPE)
    for k in range(2):
        plain = ClassDataGuard.fit(Always(k, 3), images, labels, 90, 99.9, 0.98, True).eval()
        guard = ClassDataGuard.fit(Always(k, 3), images, labels, 90, 99.9, 0.98, True).eval()
        guard.with_margin(images, labels, 95, 99.9)
        with torch.no_grad():
            assert float(plain(between).softmax(1)[0, k]) >= 0.99
            assert float(guard(between).softmax(1)[0, k]) <= 0.98 + 1e-6
            assert (guard(images[labels == k]).softmax(1)[:, k] >= 0.99).all()  # its own training images
    config = ClassifierConfig()
    info = save_classifier(tmp_path / "m.safetensors", guard, config, SHAPE, ["a", "b"], "toy", True)
    assert info.guard["margin_ratios"] == pytest.approx(guard.margin_constants[:2].tolist())
