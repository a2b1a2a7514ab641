"""Build a classifier by name: our SmallCNN, a torchvision architecture, or a user's factory.

`arch` is one of:
- `small_cnn` (default): the seed papers' convolutional classifier, sized from the input shape;
- a torchvision model name (`resnet18`, `mobilenet_v3_small`, ...), built untrained with `num_classes`;
  grey images are repeated to three channels in front of it unless `grey_to_rgb` says otherwise;
- `package.module:factory`: a callable `factory(image_shape, num_classes) -> nn.Module`, importable
  on every Ray worker (ship it with `--working-dir` or install it); `image_shape` is what the model
  sees, (3, H, W) for grey data with `grey_to_rgb`.

A model trained elsewhere declares its input preprocessing (`input_range`, `mean`, `std`, `grey_to_rgb`;
see `preprocessing.py`); the classifier is then that preprocessing in front of the model, so it still
takes the data contract (float32 N x C x H x W in [0, 1]).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import torch
from torch import nn

from ccc_ray.classifiers.preprocessing import Preprocessed, check_normalisation, model_channels
from ccc_ray.classifiers.small_cnn import SmallCNN
from ccc_ray.config import option
from ccc_ray.errors import CccError


@dataclass
class ClassifierConfig:
    arch: str = option("small_cnn", "small_cnn | a torchvision model name | package.module:factory")
    weights: str | None = option(None, "weights file (.safetensors, or a .pt state dict): the trained model "
                                       "import-classifier adopts, or train-classifier's starting point; a state "
                                       "dict of the model arch builds (without the preprocessing), or a ccc-ray "
                                       "classifier file")
    width: int = option(32, "small_cnn: channels of the first convolution block", ge=1)
    hidden: int = option(256, "small_cnn: units of the hidden fully connected layer", ge=1)
    dropout: float = option(0.25, "small_cnn: dropout probability", ge=0, lt=1)
    epochs: int = option(40, "training epochs", ge=1)
    batch_size: int = option(64, "global batch size (split across Ray workers)", ge=1)
    learning_rate: float = option(1e-3, "Adam learning rate", gt=0)
    weight_decay: float = option(1e-4, "Adam weight decay", ge=0)
    seed: int = option(0, "seed for initialisation and batch order")
    # The input preprocessing of a model trained elsewhere (preprocessing.py): run in front of it, saved with
    # the classifier, and inside its ONNX export, whose input is then raw images in [0, input_range].
    input_range: float = option(1.0, "the model's input for white: 1 (pixels in [0, 1], torchvision's ToTensor) or "
                                     "255 (byte values); mean and std are in these units", gt=0)
    mean: list[float] = option([], "per-channel mean subtracted from the scaled pixels: one value, or one per "
                                   "channel the model sees (e.g. 0.485,0.456,0.406); empty = none")
    std: list[float] = option([], "per-channel standard deviation the pixels are then divided by; empty = none",
                              gt=0)
    grey_to_rgb: bool | None = option(None, "repeat grey (1-channel) images to 3 channels for the model: true, "
                                            "false, or none = for torchvision architectures only")


def build_classifier(config: ClassifierConfig, image_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """An untrained classifier for images of `image_shape` (C, H, W) and `num_classes` classes, checked to fit:
    the model `arch` builds, behind the declared preprocessing where there is any."""
    arch = config.arch
    torchvision_arch = arch != "small_cnn" and ":" not in arch
    grey_to_rgb = config.grey_to_rgb if config.grey_to_rgb is not None else torchvision_arch and image_shape[0] == 1
    seen = (model_channels(image_shape[0], grey_to_rgb), *image_shape[1:])  # what the user's model sees
    check_normalisation(config.mean, config.std, seen[0])
    if arch == "small_cnn":
        model: nn.Module = SmallCNN(seen, num_classes, config.width, config.hidden, config.dropout)
    elif ":" in arch:
        module_name, _, factory_name = arch.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), factory_name)
        except (ImportError, AttributeError) as error:
            raise CccError(f"classifier.arch: cannot import {arch!r} ({error})") from None
        model = factory(tuple(seen), num_classes)
        if not isinstance(model, nn.Module):
            raise CccError(f"classifier.arch: {arch!r} returned {type(model).__name__}, not a torch.nn.Module")
    else:
        import torchvision.models

        if arch not in torchvision.models.list_models():
            raise CccError(f"classifier.arch: {arch!r} is neither small_cnn, a torchvision model name, "
                           "nor package.module:factory")
        model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    if grey_to_rgb or config.mean or config.std or config.input_range != 1:
        model = Preprocessed(model, config.input_range, config.mean, config.std, grey_to_rgb)
    check_classifier_fits(model, image_shape, num_classes, arch)
    return model


def check_classifier_fits(model: nn.Module, image_shape: tuple[int, int, int], num_classes: int, what: str) -> None:
    """Raise a CccError unless `model` maps a batch of `image_shape` images to `num_classes` logits."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            device = next(model.parameters(), torch.empty(0)).device
            logits = model(torch.zeros(2, *image_shape, device=device))
    except Exception as error:  # noqa: BLE001 - any failure here means the shapes do not fit
        message = str(error).splitlines()[0]
        hint = (" (an RGB model on grey data needs --classifier.grey_to_rgb true)"
                if image_shape[0] == 1 and "channels" in message else "")
        raise CccError(f"classifier {what!r} does not accept images of shape "
                       f"{'x'.join(map(str, image_shape))}: {message}{hint}") from None
    finally:
        model.train(was_training)
    if tuple(logits.shape) != (2, num_classes):
        raise CccError(f"classifier {what!r} outputs shape {tuple(logits.shape[1:])} per image, "
                       f"but the data has {num_classes} classes")
