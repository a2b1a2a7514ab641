"""ccc_ray/classifiers/preprocessing.py: a user's declared preprocessing runs in front of their model, travels
in the classifier file, and refuses declarations that do not fit the model's input."""

import math

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from ccc_ray.classifiers.build import ClassifierConfig, build_classifier
from ccc_ray.classifiers.preprocessing import Preprocessed, user_model
from ccc_ray.classifiers.weights import fingerprint, load_classifier, load_initial_weights, save_classifier
from ccc_ray.config import validate_config
from ccc_ray.errors import CccError

torch.set_num_threads(1)
NAMES = [str(i) for i in range(10)]
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def byte_net(image_shape, num_classes):
    """A user's model, trained (elsewhere) on byte values normalised to about [-1, 1]."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(image_shape), num_classes))


THIS = f"{__name__}:byte_net"
BYTE_CONFIG = ClassifierConfig(arch=THIS, input_range=255, mean=[127.5], std=[127.5])


def test_model_sees_what_the_users_pipeline_made_of_the_image():
    model = build_classifier(BYTE_CONFIG, (1, 8, 8), 10).eval()
    assert isinstance(model, Preprocessed)
    images = torch.randint(0, 256, (4, 1, 8, 8)).float() / 255  # the data contract: [0, 1]
    raw = images * 255  # what the user's pipeline starts from
    with torch.no_grad():
        assert torch.allclose(model(images), user_model(model)((raw - 127.5) / 127.5), atol=1e-5)
        assert torch.allclose(model.raw_forward(raw), model(images), atol=1e-5)


def test_torchvision_model_on_grey_data_gets_rgb_and_imagenet_normalisation():
    import torchvision.transforms.v2 as T

    config = ClassifierConfig(arch="resnet18", mean=IMAGENET_MEAN, std=IMAGENET_STD)
    model = build_classifier(config, (1, 16, 16), 10).eval()
    grey = torch.rand(3, 1, 16, 16)
    pipeline = T.Compose([T.Grayscale(num_output_channels=3), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    with torch.no_grad():
        assert torch.allclose(model(grey), user_model(model)(pipeline(grey)), atol=1e-5)


def test_preprocessing_is_saved_rebuilt_and_part_of_the_fingerprint(tmp_path):
    model = build_classifier(BYTE_CONFIG, (1, 8, 8), 10).eval()
    info = save_classifier(tmp_path / "c.safetensors", model, BYTE_CONFIG, (1, 8, 8), NAMES, "digits")
    loaded, loaded_info = load_classifier(tmp_path / "c.safetensors")
    assert loaded_info.config == BYTE_CONFIG and loaded_info.sha256 == info.sha256
    images = torch.rand(5, 1, 8, 8)
    assert torch.equal(loaded(images), model(images))
    other = ClassifierConfig(arch=THIS, input_range=255, mean=[100.0], std=[127.5])
    same_weights = build_classifier(other, (1, 8, 8), 10)
    assert fingerprint(user_model(same_weights)) == fingerprint(user_model(model))
    assert fingerprint(same_weights) != info.sha256  # same weights, other preprocessing: another classifier


def test_grey_to_rgb_alone_keeps_the_state_dict_of_before():
    # Classifier files of torchvision models on grey data, written before preprocessing existed, still load.
    model = build_classifier(ClassifierConfig(arch="resnet18"), (1, 16, 16), 3)
    assert isinstance(model, Preprocessed) and model.grey_to_rgb
    assert all(name.startswith("model.") for name in model.state_dict())


def test_users_own_state_dict_loads_into_their_model(tmp_path):
    trained = byte_net((1, 8, 8), 10)
    with torch.no_grad():
        trained[1].weight.mul_(3.0)
    save_file(trained.state_dict(), tmp_path / "mine.safetensors")  # keys "1.weight", "1.bias": no wrapper
    config = ClassifierConfig(arch=THIS, input_range=255, mean=[127.5], std=[127.5],
                              weights=str(tmp_path / "mine.safetensors"))
    model = build_classifier(config, (1, 8, 8), 10)
    load_initial_weights(model, config, (1, 8, 8), 10)
    assert fingerprint(user_model(model)) == fingerprint(trained)
    assert float(model.mean) == 127.5  # the preprocessing comes from the config, not the weights


@pytest.mark.parametrize("config, shape, message", [
    (ClassifierConfig(arch=THIS, mean=IMAGENET_MEAN, std=IMAGENET_STD), (1, 8, 8),
     "classifier.mean: 3 values, but the model sees 1-channel images.*grey_to_rgb true"),
    (ClassifierConfig(arch=THIS, mean=[0.5, 0.5], std=[0.5]), (3, 8, 8),
     "classifier.mean: 2 values, but the model sees 3-channel images; give one value, or 3"),
    (ClassifierConfig(arch=THIS, grey_to_rgb=True), (3, 8, 8), "classifier.grey_to_rgb: the data has 3 channels"),
    (ClassifierConfig(arch="resnet18", grey_to_rgb=False), (1, 16, 16),
     "does not accept images of shape 1x16x16.*needs --classifier.grey_to_rgb true"),
])
def test_preprocessing_that_does_not_fit_the_model_is_refused(config, shape, message):
    with pytest.raises(CccError, match=message):
        build_classifier(config, shape, 10)


@pytest.mark.parametrize("field, value, message", [
    ("std", [0.5, 0.0, 0.5], "std: must be positive, got 0.0"),
    ("input_range", 0.0, "input_range: must be positive"),
])
def test_declared_bounds(field, value, message):
    with pytest.raises(CccError, match=message):
        validate_config(ClassifierConfig(**{field: value}), "classifier.")
