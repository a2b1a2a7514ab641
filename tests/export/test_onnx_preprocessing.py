"""The ONNX export of a user's model takes the raw images of the user's own pipeline: parity on raw inputs.

The reference is the user's pipeline written out here (byte values, grey-to-RGB, torchvision's Normalize)
in front of the user's model; the exported file is run by onnxruntime directly, with no ccc-ray code
between the raw images and the graph.
"""

import math

import numpy as np
import onnxruntime as ort
import torch
import torchvision.transforms.v2 as T
from torch import nn

from ccc_ray.classifiers.build import ClassifierConfig, build_classifier
from ccc_ray.classifiers.preprocessing import user_model
from ccc_ray.export.onnx_export import check_parity, export_onnx
from ccc_ray.export.onnx_runtime import OnnxClassifier
from ccc_ray.classifiers.widen import widen_classifier

torch.set_num_threads(1)
NAMES = [str(i) for i in range(10)]
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def byte_net(image_shape, num_classes):
    torch.manual_seed(0)
    layer = nn.Linear(math.prod(image_shape), num_classes)
    with torch.no_grad():
        layer.weight.mul_(20.0)  # a confident softmax, so parity compares real probabilities
    return nn.Sequential(nn.Flatten(), layer)


def onnx_on_raw(path, raw: torch.Tensor) -> torch.Tensor:
    """Softmax of the exported file on raw images, through onnxruntime alone."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {session.get_inputs()[0].name: raw.numpy().astype(np.float32)})
    return torch.from_numpy(logits).softmax(1)


def test_byte_valued_pipeline(tmp_path):
    config = ClassifierConfig(arch=f"{__name__}:byte_net", input_range=255, mean=[127.5], std=[127.5])
    model = build_classifier(config, (1, 8, 8), 10).eval()
    path = tmp_path / "bytes.onnx"
    metadata = export_onnx(model, path, NAMES, (1, 8, 8))
    assert metadata.input_range == 255
    raw = torch.randint(0, 256, (16, 1, 8, 8)).float()  # the user's images: byte values
    with torch.no_grad():
        expected = user_model(model)((raw - 127.5) / 127.5).softmax(1)
    assert expected.amax(1).mean() > 0.6
    assert (onnx_on_raw(path, raw) - expected).abs().max() <= 1e-5
    runtime = OnnxClassifier(path, num_threads=1)  # ccc-ray's own callers keep passing [0, 1] images
    assert runtime.input_range == 255 and runtime.metadata["input_range"] == 255
    assert (runtime(raw / 255).softmax(1) - expected).abs().max() <= 1e-5
    assert check_parity(model, runtime, raw / 255) <= 1e-5


def test_torchvision_model_with_grey_to_rgb_and_normalize(tmp_path):
    config = ClassifierConfig(arch="resnet18", mean=IMAGENET_MEAN, std=IMAGENET_STD)
    torch.manual_seed(0)
    model = build_classifier(config, (1, 16, 16), 10).eval()
    path = tmp_path / "resnet.onnx"
    metadata = export_onnx(model, path, NAMES, (1, 16, 16))
    assert metadata.input_range == 1 and metadata.image_shape == (1, 16, 16)  # it takes the grey image
    raw = torch.rand(8, 1, 16, 16)  # ToTensor's [0, 1]
    pipeline = T.Compose([T.Grayscale(num_output_channels=3), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    with torch.no_grad():
        expected = user_model(model)(pipeline(raw)).softmax(1)
    assert (onnx_on_raw(path, raw) - expected).abs().max() <= 1e-5


def test_hardened_form_keeps_the_preprocessing(tmp_path):
    config = ClassifierConfig(arch=f"{__name__}:byte_net", input_range=255, mean=[127.5], std=[127.5])
    widened = widen_classifier(build_classifier(config, (1, 8, 8), 10), (1, 8, 8)).eval()
    path = tmp_path / "reject.onnx"
    export_onnx(widened, path, NAMES, (1, 8, 8), ood_score="not_reject", reject_class=True)
    raw = torch.randint(0, 256, (6, 1, 8, 8)).float()
    with torch.no_grad():
        expected = user_model(widened)((raw - 127.5) / 127.5).softmax(1)
    assert expected.shape == (6, 11)
    assert (onnx_on_raw(path, raw) - expected).abs().max() <= 1e-5
