"""The data guard: no confident answer far from the training data, the same answer on it, saved and exported."""

from __future__ import annotations

import math

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from ccc_ray.classifiers.build import ClassifierConfig, build_classifier
from ccc_ray.classifiers.guard import DataGuard, leave_one_out_distances
from ccc_ray.classifiers.weights import load_classifier, save_classifier
from ccc_ray.counterfeits.quality import nearest_distances
from ccc_ray.errors import CccError
from ccc_ray.export.onnx_export import check_parity, export_onnx
from ccc_ray.classifiers.widen import widen_classifier

torch.set_num_threads(1)
NAMES = [str(i) for i in range(10)]


def confident_net(image_shape, num_classes):
    """A linear model with large weights: confident (> 0.99) almost everywhere, the case a guard exists for."""
    torch.manual_seed(0)
    layer = nn.Linear(math.prod(image_shape), num_classes)
    with torch.no_grad():
        layer.weight.mul_(200.0)
    return nn.Sequential(nn.Flatten(), layer)


@pytest.fixture(scope="module")
def guarded(digits):
    model = widen_classifier(confident_net(digits.image_shape, 10), digits.image_shape).eval()
    return DataGuard.fit(model, digits.train_images, 90, 99.9, 0.98, reject_class=True).eval()


def test_leave_one_out_excludes_the_image_itself(digits):
    images = digits.train_images[:300]
    expected = torch.tensor([nearest_distances(images[i:i + 1], torch.cat([images[:i], images[i + 1:]]))[0]
                             for i in range(len(images))])
    assert torch.allclose(leave_one_out_distances(images), expected, atol=1e-4)
    assert (leave_one_out_distances(images) > 0).all()  # digits has no exact duplicate in this slice


def test_far_images_stay_below_the_cap_and_near_ones_keep_their_answer(digits, guarded):
    with torch.no_grad():
        noise = torch.rand(400, *digits.image_shape, generator=torch.Generator().manual_seed(0))
        # images walked away from training digits until they lie just beyond the edge distance
        start = digits.train_images[:200]
        direction = torch.randn(start.shape, generator=torch.Generator().manual_seed(1))
        direction = direction / direction.flatten(1).norm(dim=1)[:, None, None, None]
        walked = start + direction * guarded.edge_distance * 1.001
        beyond = walked[nearest_distances(walked, digits.train_images) >= guarded.edge_distance]
        assert len(beyond) > 100
        for far in (noise, beyond):
            assert guarded.classifier(far).softmax(1)[:, :-1].max() > 0.99  # the plain model is fooled
            assert guarded(far).softmax(1)[:, :-1].max() <= 0.98 + 1e-6
        on_data = digits.train_images
        plain, safe = guarded.classifier(on_data).softmax(1), guarded(on_data).softmax(1)
        assert torch.equal(plain.argmax(1), safe.argmax(1))
        assert (plain - safe).abs().max() < 1e-3  # a training image is distance 0: g is 1 to 1e-3
        assert (guarded(noise).softmax(1).argmax(1) == 10).float().mean() > 0.95  # noise: rejected


def test_probabilities_sum_to_one_without_a_reject_class(digits):
    model = confident_net(digits.image_shape, 10).eval()
    guard = DataGuard.fit(model, digits.train_images, 90, 99.9, 0.98, reject_class=False).eval()
    noise = torch.rand(64, *digits.image_shape, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        p = guard(noise).softmax(1)
    assert p.shape == (64, 10) and torch.allclose(p.sum(1), torch.ones(64))
    assert p.max() <= 0.98 + 1e-6 and p.min() > 0.05  # far: close to uniform


def test_saved_guard_loads_back_and_exports_with_parity(tmp_path, digits):
    config = ClassifierConfig()
    model = widen_classifier(build_classifier(config, digits.image_shape, 10), digits.image_shape).eval()
    guard = DataGuard.fit(model, digits.train_images, 90, 99.9, 0.98, reject_class=True).eval()
    info = save_classifier(tmp_path / "g.safetensors", guard, config, digits.image_shape, NAMES, "digits", True)
    loaded, loaded_info = load_classifier(tmp_path / "g.safetensors", digits.image_shape, 10)
    assert isinstance(loaded, DataGuard) and loaded_info.sha256 == info.sha256
    assert loaded_info.guard["edge_distance"] == pytest.approx(guard.edge_distance)
    images = torch.cat([digits.test_images[:32], torch.rand(32, *digits.image_shape)])
    with torch.no_grad():
        assert torch.equal(loaded(images), guard(images))
    export_onnx(loaded, tmp_path / "g.onnx", NAMES, digits.image_shape, "not_reject", 0.5, True)
    assert check_parity(loaded, tmp_path / "g.onnx", images) <= 1e-5


def test_guard_around_a_byte_valued_model_takes_raw_images_in_onnx(tmp_path, digits):
    config = ClassifierConfig(arch=f"{__name__}:confident_net", input_range=255, mean=[127.5], std=[127.5])
    model = build_classifier(config, digits.image_shape, 10).eval()
    guard = DataGuard.fit(model, digits.train_images, 90, 99.9, 0.98, reject_class=False).eval()
    metadata = export_onnx(guard, tmp_path / "bytes.onnx", NAMES, digits.image_shape)
    assert metadata.input_range == 255
    contract = torch.cat([digits.test_images[:8], torch.rand(8, *digits.image_shape)])
    session = ort.InferenceSession(str(tmp_path / "bytes.onnx"), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"images": (contract * 255).numpy().astype(np.float32)})
    with torch.no_grad():
        expected = guard(contract).softmax(1)
    assert (torch.from_numpy(logits).softmax(1) - expected).abs().max() <= 1e-5


def test_bad_settings_are_refused(digits):
    model = confident_net(digits.image_shape, 10)
    with pytest.raises(CccError, match="edge percentile"):
        DataGuard.fit(model, digits.train_images, 99.9, 90, 0.98, reject_class=False)
    with pytest.raises(CccError, match="cap"):
        DataGuard.fit(model, digits.train_images, 90, 99.9, 0.4, reject_class=False)
    with pytest.raises(CccError, match="at least 2"):
        DataGuard.fit(model, digits.train_images[:1], 90, 99.9, 0.98, reject_class=False)
