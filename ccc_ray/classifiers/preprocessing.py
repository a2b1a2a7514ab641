"""A user's input preprocessing, as a module in front of their model.

Every ccc-ray stage feeds a classifier the data contract: float32 N x C x H x W in [0, 1]. A model trained
elsewhere expects what its own pipeline made of an image, in this order (torchvision's `Grayscale(3)`,
`ToTensor`, `Normalize`):

    raw   = the image's pixels in [0, input_range]   (input_range 1: ToTensor's [0, 1]; 255: byte values)
    rgb   = raw repeated to 3 channels                (grey_to_rgb: a grey image for an RGB model)
    input = (rgb - mean) / std, per channel           (mean and std in the units of input_range)

`Preprocessed` takes contract images, scales them to `raw = images * input_range` and runs the rest, so
the model sees what it was trained on and every stage stays unchanged. "Raw images" means the first line:
the values the user's pipeline starts from. The ONNX export takes raw images (`raw_input_model`), so the
exported file takes the same inputs as the user's pipeline; it records `input_range` so ccc-ray's own
onnxruntime wrapper can scale contract images into it.

The mean, std and range are persistent buffers, so a classifier's fingerprint (the sha256 of its state
dict) changes with its preprocessing: the same weights behind other preprocessing are another classifier.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ccc_ray.errors import CccError


class Preprocessed(nn.Module):
    """`model` behind the user's preprocessing.

    Contract: `forward` takes float32 N x C x H x W in [0, 1] and returns the model's N x K logits;
    `raw_forward` takes the same images in [0, input_range].
    """

    def __init__(self, model: nn.Module, input_range: float = 1.0, mean: Sequence[float] = (),
                 std: Sequence[float] = (), grey_to_rgb: bool = False):
        super().__init__()
        self.model = model  # the name RepeatGrey used, so torchvision-on-grey classifier files keep loading
        self.grey_to_rgb = grey_to_rgb
        self.raw_range = float(input_range)  # white in the raw images the model's pipeline starts from
        # Only a wrapper that normalises has buffers: a grey-to-RGB-only one keeps the state dict of before.
        self.normalises = bool(mean or std or self.raw_range != 1.0)
        if self.normalises:
            self.register_buffer("input_range", torch.tensor(self.raw_range))
            self.register_buffer("mean", torch.tensor(list(mean) or [0.0], dtype=torch.float32).view(1, -1, 1, 1))
            self.register_buffer("std", torch.tensor(list(std) or [1.0], dtype=torch.float32).view(1, -1, 1, 1))

    def raw_forward(self, raw: torch.Tensor) -> torch.Tensor:
        """Logits for raw images N x C x H x W in [0, input_range]: the user's pipeline, then the model."""
        if self.grey_to_rgb:
            raw = raw.expand(-1, 3, -1, -1)
        if self.normalises:
            raw = (raw - self.mean) / self.std
        return self.model(raw)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.raw_forward(images * self.input_range if self.normalises else images)


class RawInputs(nn.Module):
    """The graph the ONNX export traces: raw images in, logits out (see the module doc)."""

    def __init__(self, preprocessed: Preprocessed):
        super().__init__()
        self.preprocessed = preprocessed

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        return self.preprocessed.raw_forward(raw)


class ScaledInputs(nn.Module):
    """Raw images in, scaled to the data contract for a model that needs contract images (a data guard
    around a preprocessed model measures its distances on contract images)."""

    def __init__(self, model: nn.Module, input_range: float):
        super().__init__()
        self.model, self.input_range = model, float(input_range)

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        return self.model(raw / self.input_range)


def raw_input_model(model: nn.Module) -> tuple[nn.Module, float]:
    """(a module taking raw images, their input_range): `model` itself where raw images are contract images."""
    if isinstance(model, Preprocessed) and model.raw_range != 1.0:
        return RawInputs(model), model.raw_range
    inner = getattr(model, "classifier", None)  # a DataGuard (classifiers/guard.py) around a preprocessed model
    if isinstance(inner, Preprocessed) and inner.raw_range != 1.0:
        return ScaledInputs(model, inner.raw_range), inner.raw_range
    return model, 1.0


def user_model(model: nn.Module) -> nn.Module:
    """The user's own model inside `model`: what their weights file fits."""
    return model.model if isinstance(model, Preprocessed) else model


def model_channels(data_channels: int, grey_to_rgb: bool) -> int:
    """Channels the user's model sees, checking that grey-to-RGB has a grey image to work on."""
    if grey_to_rgb and data_channels != 1:
        raise CccError(f"classifier.grey_to_rgb: the data has {data_channels} channels already; grey_to_rgb "
                       "repeats a 1-channel image to 3 (set it false, or --data.channels 1)")
    return 3 if grey_to_rgb else data_channels


def check_normalisation(mean: Sequence[float], std: Sequence[float], channels: int) -> None:
    """mean and std each hold no value, one for every channel, or one per channel the model sees."""
    for name, values in (("mean", mean), ("std", std)):
        if len(values) not in (0, 1, channels):
            raise CccError(f"classifier.{name}: {len(values)} values, but the model sees {channels}-channel "
                           f"images; give one value, or {channels}"
                           + (" (an RGB model on grey data also needs --classifier.grey_to_rgb true)"
                              if channels == 1 and len(values) == 3 else ""))
