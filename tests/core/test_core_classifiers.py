"""ccc_ray/classifiers/build.py: classifiers by name (SmallCNN, torchvision, a user factory), checked to fit."""

import sys
import textwrap

import pytest
import torch
from torch import nn

from ccc_ray.classifiers.build import ClassifierConfig, build_classifier, check_classifier_fits
from ccc_ray.classifiers.preprocessing import Preprocessed
from ccc_ray.classifiers.features import features_and_logits
from ccc_ray.classifiers.small_cnn import SmallCNN
from ccc_ray.errors import CccError

torch.set_num_threads(1)


@pytest.mark.parametrize("image_shape, num_classes", [((1, 16, 16), 10), ((3, 32, 32), 5), ((1, 8, 8), 10)])
def test_small_cnn_maps_images_to_logits(image_shape, num_classes):
    model = build_classifier(ClassifierConfig(width=4, hidden=16), image_shape, num_classes)
    assert isinstance(model, SmallCNN)
    model.eval()
    logits = model(torch.rand(3, *image_shape))
    assert logits.shape == (3, num_classes)
    features, same_logits = features_and_logits(model, torch.rand(3, *image_shape))
    assert features.shape == (3, 16) and same_logits.shape == (3, num_classes)


def test_torchvision_arch_accepts_grey_images():
    torch.manual_seed(0)
    model = build_classifier(ClassifierConfig(arch="resnet18"), (1, 16, 16), 4)
    assert isinstance(model, Preprocessed)
    model.eval()
    grey = torch.rand(2, 1, 16, 16)
    logits = model(grey)
    assert logits.shape == (2, 4)
    # Grey is repeated to RGB, so the wrapped model sees three equal channels.
    assert torch.allclose(logits, model.model(grey.repeat(1, 3, 1, 1)))
    features, _ = features_and_logits(model, grey)
    assert features.shape == (2, 512)


def test_torchvision_arch_is_not_wrapped_for_rgb():
    model = build_classifier(ClassifierConfig(arch="resnet18"), (3, 16, 16), 3)
    assert not isinstance(model, Preprocessed)


def test_unknown_arch_is_an_error():
    with pytest.raises(CccError, match="classifier.arch: 'resnet_9000' is neither"):
        build_classifier(ClassifierConfig(arch="resnet_9000"), (1, 8, 8), 10)


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A user's factory module importable as `ccc_core_user_nets`."""
    (tmp_path / "ccc_core_user_nets.py").write_text(textwrap.dedent("""
        import math
        from torch import nn

        calls = []

        def linear(image_shape, num_classes):
            calls.append((image_shape, num_classes))
            return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(image_shape), num_classes))

        def too_few_outputs(image_shape, num_classes):
            return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(image_shape), num_classes - 1))

        def not_a_module(image_shape, num_classes):
            return "a string"
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "ccc_core_user_nets", raising=False)
    yield "ccc_core_user_nets"
    sys.modules.pop("ccc_core_user_nets", None)


def test_user_factory_is_called_with_shape_and_class_count(user_module):
    model = build_classifier(ClassifierConfig(arch=f"{user_module}:linear"), (1, 8, 8), 7)
    assert sys.modules[user_module].calls == [((1, 8, 8), 7)]
    assert isinstance(model[1], nn.Linear) and model[1].in_features == 64
    assert model(torch.rand(2, 1, 8, 8)).shape == (2, 7)


@pytest.mark.parametrize("factory, message", [
    ("too_few_outputs", r"outputs shape \(6,\) per image, but the data has 7 classes"),
    ("not_a_module", "returned str, not a torch.nn.Module"),
    ("missing", "cannot import"),
])
def test_bad_user_factory_is_an_error(user_module, factory, message):
    with pytest.raises(CccError, match=message):
        build_classifier(ClassifierConfig(arch=f"{user_module}:{factory}"), (1, 8, 8), 7)


def test_unimportable_factory_module_is_an_error():
    with pytest.raises(CccError, match="classifier.arch: cannot import 'no_such_pkg_ccc.nets:f'"):
        build_classifier(ClassifierConfig(arch="no_such_pkg_ccc.nets:f"), (1, 8, 8), 3)


def test_model_for_other_images_does_not_fit():
    model = SmallCNN((1, 8, 8), 10, width=4, hidden=16)
    model.train()
    with pytest.raises(CccError, match="does not accept images of shape 1x16x16"):
        check_classifier_fits(model, (1, 16, 16), 10, "small_cnn")
    assert model.training  # the check restores the mode it found
    with pytest.raises(CccError, match="outputs shape \\(10,\\) per image, but the data has 3 classes"):
        check_classifier_fits(model, (1, 8, 8), 3, "small_cnn")
