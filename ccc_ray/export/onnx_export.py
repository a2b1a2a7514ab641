"""Export a torch classifier to ONNX with a dynamic batch, its deployment facts in the file, and a parity check.

Exporter: the TorchScript-based one (`torch.onnx.export(..., dynamo=False)`). In torch 2.9+ the default
is the torch.export-based exporter, which needs the `onnxscript` package; the TorchScript one ships with
torch, works offline, and handles our classifiers (convolutions, pooling, linear layers) exactly. It is
deprecated, so its deprecation warnings are silenced here; move to `dynamo=True` (and `dynamic_shapes`)
when onnxscript becomes a dependency or torch drops the old exporter.

Contract: the model takes float32 N x C x H x W in [0, 1] and returns N x K logits (K + 1 with a reject
class); the file has one input `images` [batch, C, H, W] and one output `logits` [batch, K].

The file's input is raw images: what the user's own pipeline starts from, float32 in [0, input_range].
For a classifier with declared preprocessing (`ccc_ray/classifiers/preprocessing.py`) the graph holds
grey-to-RGB and mean/std, and `input_range` is the declared one (255 for a byte-valued pipeline), recorded
in the metadata; for every other classifier raw images are the data contract, [0, 1].
"""

from __future__ import annotations

import copy

import io
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from ccc_ray.classifiers.preprocessing import raw_input_model
from ccc_ray.classifiers.weights import fingerprint
from ccc_ray.errors import CccError
from ccc_ray.export.metadata import OnnxMetadata
from ccc_ray.export.onnx_runtime import OnnxClassifier
from ccc_ray.store.files import atomic_write_bytes, ensure_writable_dir

OPSET = 17  # run by every onnxruntime since 1.11 and by TensorRT 8.6+
INPUT_NAME, OUTPUT_NAME = "images", "logits"


def export_onnx(model: nn.Module, path: str | Path, class_names: list[str] | tuple[str, ...],
                image_shape: tuple[int, int, int], ood_score: str = "max_softmax", threshold: float | None = None,
                reject_class: bool = False) -> OnnxMetadata:
    """Write `model` to `path` as ONNX (atomically: temporary file, then rename) and return its metadata.

    `class_names` are the K real classes; `reject_class` says the model has one more output, the last.
    `threshold` is the accept-if-score->=-threshold cut for `ood_score` (None if not calibrated yet).
    The classifier's sha256 is its weights' fingerprint, the one the counterfeit store records.
    """
    inner = model
    graph, input_range = raw_input_model(inner)
    metadata = OnnxMetadata(tuple(class_names), tuple(int(size) for size in image_shape), fingerprint(inner),
                            ood_score, None if threshold is None else float(threshold), reject_class, input_range)
    metadata.validate()
    ensure_writable_dir(Path(path).parent, "ONNX export")
    example = torch.zeros(2, *metadata.image_shape, device=next(inner.parameters()).device)
    was_training = inner.training
    graph.eval()  # the traced module (the classifier, or raw inputs in front of it) and all within
    try:
        with torch.no_grad():
            width = inner(example).shape[-1]
        if width != metadata.num_outputs:
            raise CccError(f"ONNX export: the model has {width} outputs, but {len(metadata.class_names)} class "
                           f"names{' and a reject class' if reject_class else ''} make {metadata.num_outputs}")
        raw = _torchscript_export(graph, example)
    finally:
        inner.train(was_training)
    proto = onnx.load_from_string(raw)
    for key, value in metadata.to_props().items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    atomic_write_bytes(path, proto.SerializeToString())
    return metadata


def _torchscript_export(model: nn.Module, example: torch.Tensor) -> bytes:
    """The ONNX bytes of `model` traced on `example`, with the batch dimension left symbolic."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript exporter warns that it is deprecated, also from inside torch; see the module doc.
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            torch.onnx.export(model, (example,), buffer, dynamo=False, opset_version=OPSET,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
        except Exception as error:  # noqa: BLE001 - unsupported operators and tracing failures of user models
            first = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise CccError(f"ONNX export of {type(model).__name__} failed: {first[:300]}") from None
    return buffer.getvalue()


def check_parity(model: nn.Module, onnx_model: OnnxClassifier | str | Path, images: torch.Tensor,
                 tolerance: float = 1e-5) -> float:
    """Max |softmax(torch logits) - softmax(ONNX logits)| over `images` (float32 N x C x H x W in [0, 1];
    `OnnxClassifier` scales them to the file's raw input range).

    Raises a CccError when it exceeds `tolerance`; returns it otherwise. Compares probabilities, not
    logits, because decisions and OOD thresholds live on the softmax scale.
    """
    runtime = onnx_model if isinstance(onnx_model, OnnxClassifier) else OnnxClassifier(onnx_model)
    # The reference is the model in float32 on the CPU: a CUDA model would compare GPU numerics (TF32
    # convolutions differ by ~1e-4), not whether the exported graph computes what the model computes.
    reference = copy.deepcopy(model).cpu().float().eval()
    with torch.no_grad():
        expected = reference(images.cpu().float()).softmax(dim=1)
    actual = runtime(images).float().softmax(dim=1).cpu()
    if actual.shape != expected.shape:
        raise CccError(f"ONNX parity: the ONNX model gives logits {tuple(actual.shape)}, torch gives "
                       f"{tuple(expected.shape)}")
    gap = float((actual - expected).abs().max()) if expected.numel() else 0.0
    if gap > tolerance:
        raise CccError(f"ONNX parity: softmax outputs differ by up to {gap:.3g}, above the tolerance "
                       f"{tolerance:g}; the exported model does not compute what the torch model does")
    return gap
