"""Run an exported classifier with onnxruntime: a black-box `ClassifierFn` (images -> logits, no gradients).

The CUDA execution provider is asked for only where it can load: onnxruntime-gpu lists
`CUDAExecutionProvider` as available on any machine, and asking for it without a GPU prints an error and
a warning before falling back to the CPU. `choose_providers` gates on torch seeing a GPU.

Contract: `OnnxClassifier(images)` takes float32 N x C x H x W in [0, 1] (any device) and returns float32
N x K logits on the images' device. A file whose metadata names another raw input range (a user's model
that takes byte values, `input_range` 255) gets the images scaled into it, so every caller keeps the
data contract.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from ccc_ray.errors import CccError
from ccc_ray.export.metadata import OnnxMetadata

CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"
QUIET = 3  # onnxruntime log severity: 0 verbose, 1 info, 2 warning, 3 error, 4 fatal


def choose_providers() -> list[str]:
    """[CUDA, CPU] where a GPU is visible and onnxruntime has the CUDA provider, else [CPU]."""
    if torch.cuda.is_available() and CUDA in ort.get_available_providers():
        return [CUDA, CPU]
    return [CPU]


def _one_line(error: Exception) -> str:
    """onnxruntime's message on one line; its end says what was wrong (the start is a C++ location)."""
    message = " ".join(str(error).split()) or type(error).__name__
    return message if len(message) <= 240 else "..." + message[-240:]


class OnnxClassifier:
    """An ONNX image classifier loaded into an onnxruntime session, callable like a torch classifier."""

    def __init__(self, path: str | Path, providers: list[str] | None = None, num_threads: int = 0,
                 spin_wait: bool = True):
        """`providers` defaults to `choose_providers()`; `num_threads` 0 lets onnxruntime pick (CPU only).

        `spin_wait=False` stops onnxruntime's idle threads from busy-waiting between calls: right for a
        caller that runs its own CPU work between calls (evolution mutates in torch there), where spinning
        threads take the cores that work needs (2 threads on 2 cores: about 2x slower with spinning).
        """
        self.path = str(path)
        file = Path(path)
        if not file.is_file():
            raise CccError(f"ONNX model {self.path!r} does not exist")
        options = ort.SessionOptions()
        options.log_severity_level = QUIET
        options.intra_op_num_threads = num_threads
        if not spin_wait:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(file.read_bytes(), options,
                                                providers=providers or choose_providers())
        except Exception as error:  # noqa: BLE001 - onnxruntime raises its own types for corrupt files
            raise CccError(f"ONNX model {self.path!r} is not a valid ONNX model ({_one_line(error)})") from None
        self.providers: list[str] = self.session.get_providers()
        self._input = self._image_input()
        self.image_shape: tuple[int, int, int] = tuple(self._input.shape[1:])
        self._fixed_batch = self._input.shape[0] if isinstance(self._input.shape[0], int) else None
        self._output = self.session.get_outputs()[0].name
        props = self.session.get_modelmeta().custom_metadata_map
        info = OnnxMetadata.from_props(props, f"ONNX model {self.path!r}")
        if info is not None and info.image_shape != self.image_shape:
            raise CccError(f"ONNX model {self.path!r}: its metadata says images are {info.image_shape}, "
                           f"its input is {self.image_shape}")
        # Our own exports give typed fields; a model exported elsewhere shows its raw key-value pairs.
        self.metadata: dict[str, Any] = asdict(info) if info is not None else dict(props)
        self.input_range: float = info.input_range if info is not None else 1.0
        self.num_classes: int = self._output_width()
        if info is not None and info.num_outputs != self.num_classes:
            raise CccError(f"ONNX model {self.path!r}: its metadata names {info.num_outputs} outputs, "
                           f"the model gives {self.num_classes}")

    def _image_input(self) -> Any:
        """The one float input, shaped [batch, C, H, W] with C, H, W fixed."""
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise CccError(f"ONNX model {self.path!r} has {len(inputs)} inputs; an image classifier has one")
        (image,) = inputs
        shape = image.shape
        if len(shape) != 4 or not all(isinstance(size, int) and size > 0 for size in shape[1:]):
            raise CccError(f"ONNX model {self.path!r}: input {image.name!r} has shape {shape}, "
                           "expected N x C x H x W with fixed C, H, W")
        if image.type != "tensor(float)":
            raise CccError(f"ONNX model {self.path!r}: input {image.name!r} is {image.type}, "
                           "expected tensor(float)")
        return image

    def _output_width(self) -> int:
        """K from the output's static shape, or from one forward pass where the file leaves it symbolic."""
        shape = self.session.get_outputs()[0].shape
        if len(shape) == 2 and isinstance(shape[1], int):
            return shape[1]
        logits = self(torch.zeros(self._fixed_batch or 1, *self.image_shape))
        if logits.dim() != 2:
            raise CccError(f"ONNX model {self.path!r} gives outputs of shape {tuple(logits.shape)}, "
                           "expected N x K")
        return int(logits.shape[1])

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Logits float32 N x K for images float32 N x C x H x W in [0, 1]; no gradient flows through."""
        if images.dim() != 4 or tuple(images.shape[1:]) != self.image_shape:
            raise CccError(f"ONNX model {self.path!r} takes images N x {' x '.join(map(str, self.image_shape))}, "
                           f"got {tuple(images.shape)}")
        if self._fixed_batch is not None and images.shape[0] != self._fixed_batch:
            raise CccError(f"ONNX model {self.path!r} was exported for batches of exactly {self._fixed_batch}, "
                           f"got {images.shape[0]}; export it with a dynamic batch")
        batch = images.detach().to("cpu", torch.float32)
        batch = np.ascontiguousarray((batch * self.input_range if self.input_range != 1.0 else batch).numpy())
        (logits,) = self.session.run([self._output], {self._input.name: batch})
        return torch.from_numpy(logits).to(images.device)

    def __repr__(self) -> str:
        return (f"OnnxClassifier({self.path!r}, image_shape={self.image_shape}, num_classes={self.num_classes}, "
                f"providers={self.providers})")
