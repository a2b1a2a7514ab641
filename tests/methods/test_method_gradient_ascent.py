import pytest
import torch

from ccc_ray.errors import CccError
from ccc_ray.methods.base import CounterfeitMethod, MethodContext
from ccc_ray.methods.gradient_ascent import GradientAscent, GradientAscentConfig


def ascent(config, classifier, shape, num_classes, bar=0.99):
    return GradientAscent(config, MethodContext(shape, num_classes, classifier, "cpu", bar))

torch.set_num_threads(1)  # tiny tensors: more threads only contend with other processes

SHAPE = (1, 8, 8)
ALL = torch.arange(10)


@pytest.fixture(scope="module")
def classifier(digits_cnn):
    """The session's SmallCNN trained for 10 epochs on digits (tests/conftest.py)."""
    return digits_cnn


def confidences(model, images, targets):
    with torch.no_grad():
        return torch.softmax(model(images), dim=1)[torch.arange(len(targets)), targets]


def test_reaches_the_threshold_for_all_ten_classes_in_one_batch(classifier):
    method = ascent(GradientAscentConfig(), classifier, SHAPE, 10)
    result = method.search(ALL, seed=0)
    assert result.fooled.all(), result.steps_to_bar
    assert (result.steps_to_bar <= 300).all()
    assert result.images.shape == (10, *SHAPE) and result.images.dtype == torch.float32
    assert result.images.min() >= 0 and result.images.max() <= 1
    assert (result.confidences >= 0.99).all()
    torch.testing.assert_close(confidences(classifier, result.images, ALL), result.confidences)


def test_each_image_stops_at_the_first_step_past_the_threshold(classifier):
    method = ascent(GradientAscentConfig(), classifier, SHAPE, 10)
    steps = method.search(ALL, seed=0).steps_to_bar
    slowest = int(steps.argmax())
    # Rows do not interact (eval mode, per-image loss), so one step fewer leaves the slowest one short.
    short = ascent(GradientAscentConfig(steps=int(steps.max()) - 1), classifier, SHAPE, 10).search(ALL, seed=0)
    assert short.steps_to_bar[slowest] == -1 and short.confidences[slowest] < 0.99
    assert torch.equal(short.steps_to_bar[steps < steps.max()], steps[steps < steps.max()])


@pytest.mark.parametrize("overrides", [{"parameterization": "sigmoid"}, {"objective": "log_probability"},
                                       {"start": "gray", "l2_weight": 0.0}])
def test_other_settings_raise_the_confidence_and_keep_pixels_in_range(classifier, overrides):
    config = GradientAscentConfig(steps=60, **overrides)
    result = ascent(config, classifier, SHAPE, 10).search(ALL, seed=0)
    start = ascent(GradientAscentConfig(steps=0, **overrides), classifier, SHAPE, 10).search(ALL, seed=0)
    assert (result.confidences > start.confidences).all() or result.fooled.all()
    assert result.fooled.float().mean() >= 0.8
    assert result.images.min() >= 0 and result.images.max() <= 1


def test_the_l2_penalty_keeps_images_closer_to_grey(classifier):
    def distance(l2_weight):
        config = GradientAscentConfig(steps=40, l2_weight=l2_weight)
        images = ascent(config, classifier, SHAPE, 10, bar=1.0).search(ALL, seed=0).images  # never stops early
        return float((images - 0.5).pow(2).sum())

    assert distance(0.1) < 0.8 * distance(0.0)


def test_same_seed_same_images_and_noise_start_depends_on_the_seed(classifier):
    method = ascent(GradientAscentConfig(), classifier, SHAPE, 10)
    assert isinstance(method, CounterfeitMethod) and method.name == "gradient_ascent"
    targets = torch.tensor([2, 2, 7])
    assert torch.equal(method.sample(targets, seed=5), method.sample(targets, seed=5))
    assert not torch.equal(method.sample(targets, seed=5), method.sample(targets, seed=6))
    grey = ascent(GradientAscentConfig(start="gray"), classifier, SHAPE, 10)
    assert torch.equal(grey.sample(targets, seed=5), grey.sample(targets, seed=6))  # nothing random


def test_leaves_the_classifier_untouched(classifier):
    classifier.zero_grad(set_to_none=True)  # training left the last batch's gradients
    before = {name: p.clone() for name, p in classifier.state_dict().items()}
    ascent(GradientAscentConfig(steps=5), classifier, SHAPE, 10).search(ALL, seed=0)
    assert all(p.grad is None for p in classifier.parameters())
    assert all(torch.equal(before[name], p) for name, p in classifier.state_dict().items())
    assert not classifier.training


def test_a_black_box_classifier_is_refused(classifier, tmp_path):
    from ccc_ray.export.onnx_export import export_onnx
    from ccc_ray.export.onnx_runtime import OnnxClassifier

    export_onnx(classifier, tmp_path / "digits.onnx", [str(k) for k in range(10)], SHAPE)
    with pytest.raises(CccError, match="no gradient"):
        ascent(GradientAscentConfig(), OnnxClassifier(tmp_path / "digits.onnx", num_threads=1), SHAPE, 10)


def test_a_classifier_that_does_not_fit_is_refused(classifier):
    with pytest.raises(CccError, match="outputs 10 classes, expected num_classes=3"):
        ascent(GradientAscentConfig(), classifier, SHAPE, 3)
    with pytest.raises(CccError, match="does not accept images of shape 1x16x16"):
        ascent(GradientAscentConfig(), classifier, (1, 16, 16), 10)


@pytest.mark.parametrize("targets, message", [(torch.tensor([10]), "target class 10 is out of range"),
                                              (torch.tensor([0, -2]), "target class -2 is out of range"),
                                              (torch.zeros(2, 2, dtype=torch.int64), "1-D")])
def test_bad_targets_are_refused(classifier, targets, message):
    with pytest.raises(CccError, match=message):
        ascent(GradientAscentConfig(), classifier, SHAPE, 10).search(targets, seed=0)


@pytest.mark.parametrize("field, value", [("l2_weight", -0.1), ("steps", -1), ("learning_rate", 0.0),
                                          ("noise_std", -1.0), ("objective", "margin"),
                                          ("parameterization", "tanh"), ("start", "data")])
def test_bad_config_names_the_field(classifier, field, value):
    with pytest.raises(CccError, match=field):
        ascent(GradientAscentConfig(**{field: value}), classifier, SHAPE, 10)
