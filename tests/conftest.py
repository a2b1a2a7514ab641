"""Shared fixtures: a small digits classifier and generator trained in-process (no Ray), once per session."""

from __future__ import annotations

import pytest
import torch

from ccc_ray.classifiers.build import ClassifierConfig, build_classifier
from ccc_ray.classifiers.training import train_epoch
from ccc_ray.classifiers.weights import save_classifier
from ccc_ray.data.sources import DataConfig, load_dataset


@pytest.fixture(scope="session")
def digits():
    return load_dataset(DataConfig())


@pytest.fixture(scope="session")
def digits_classifier_file(tmp_path_factory, digits):
    """A quickly trained SmallCNN on digits, written as a ccc-ray classifier file."""
    torch.manual_seed(0)
    config = ClassifierConfig(epochs=3)
    model = build_classifier(config, digits.image_shape, digits.num_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(digits.train_images, digits.train_labels),
                                         batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0))
    for _ in range(config.epochs):
        train_epoch(model, loader, optimizer, torch.device("cpu"), 1, torch.Generator().manual_seed(1))
    path = tmp_path_factory.mktemp("classifier") / "classifier.safetensors"
    save_classifier(path, model, config, digits.image_shape, list(digits.class_names), "digits")
    return path


@pytest.fixture(scope="session")
def digits_generator_file(tmp_path_factory, digits, digits_classifier_file):
    """A network-inversion generator bound to `digits_classifier_file`, trained for a few steps only."""
    from ccc_ray.classifiers.weights import load_classifier
    from ccc_ray.methods.generator_file import save_generator
    from ccc_ray.methods.inversion import InversionConfig, NetworkInversion

    classifier, info = load_classifier(digits_classifier_file)
    classifier.requires_grad_(False)
    method = NetworkInversion(InversionConfig(batch_size=64, steps=20), digits.image_shape, digits.num_classes)
    for step in range(20):
        method.training_step(classifier, torch.Generator().manual_seed(step), 64)
    path = tmp_path_factory.mktemp("generator") / "generator-inversion.safetensors"
    save_generator(path, method, digits.image_shape, list(digits.class_names), info.sha256)
    return path
