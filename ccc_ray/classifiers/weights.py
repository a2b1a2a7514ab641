"""Classifier files: safetensors weights plus the metadata to rebuild the model, and the fingerprint.

No pickle is ever executed: `.safetensors` holds raw tensors only, and a `.pt`/`.pth` state dict is read
with `torch.load(weights_only=True)`, which refuses arbitrary objects.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from ccc_ray.classifiers.build import (
    ClassifierConfig,
    build_classifier,
    check_classifier_fits,
)
from ccc_ray.classifiers.guard import DataGuard, empty_guard
from ccc_ray.classifiers.preprocessing import user_model
from ccc_ray.config import config_from_dict
from ccc_ray.errors import CccError
from ccc_ray.store.files import atomic_write_bytes

METADATA_KEY = "ccc_ray.classifier"


@dataclass(frozen=True)
class ClassifierInfo:
    """What a classifier file says about the model it holds."""

    config: ClassifierConfig
    image_shape: tuple[int, int, int]
    class_names: tuple[str, ...]
    data_name: str
    sha256: str
    reject_class: bool = False  # one more output after the K classes: "none of these" (hardened models)
    guard: dict | None = None  # a data guard around the model (classifiers/guard.py): its kind and fitted distances

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_outputs(self) -> int:
        return len(self.class_names) + int(self.reject_class)


def fingerprint(model: nn.Module) -> str:
    """sha256 over the state dict (names, dtypes, shapes, bytes): equal weights give equal fingerprints."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        # reshape(-1): 0-dim tensors (BatchNorm's num_batches_tracked) cannot be viewed as bytes directly.
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def save_classifier(path: str | Path, model: nn.Module, config: ClassifierConfig,
                    image_shape: tuple[int, int, int], class_names: list[str], data_name: str,
                    reject_class: bool = False) -> ClassifierInfo:
    """Write weights and rebuild metadata atomically; returns the info (with fingerprint) written."""
    from safetensors.torch import save

    state = {name: t.detach().cpu().contiguous() for name, t in model.state_dict().items()}
    guard = model.describe() if isinstance(model, DataGuard) else None
    info = ClassifierInfo(config, tuple(image_shape), tuple(class_names), data_name, fingerprint(model), reject_class,
                          guard)
    meta = {"config": asdict(config), "image_shape": list(image_shape), "class_names": list(class_names),
            "data_name": data_name, "sha256": info.sha256, "reject_class": reject_class}
    if guard is not None:
        meta["guard"] = guard
    atomic_write_bytes(path, save(state, metadata={METADATA_KEY: json.dumps(meta)}))
    return info


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and string metadata from a weights file, refusing anything that is not plain tensors."""
    file = Path(path)
    refuse_onnx(str(file))
    if not file.is_file():
        raise CccError(f"weights file {str(file)!r} does not exist")
    return parse_weights(file.read_bytes(), file.suffix, str(file))


def refuse_onnx(path: str) -> None:
    """An ONNX file holds a graph, not the torch model training and hardening change: say so in one line."""
    if path.lower().endswith(".onnx"):
        raise CccError(f"{path!r} is an ONNX model: an ONNX-only model can be scored (the scorecard, `ccc-ray "
                       "predict`, `ccc-ray attack --attack.onnx_path`) but not hardened or trained against, which "
                       "needs the torch model; adopt its torch weights with `ccc-ray import-classifier "
                       "--classifier.arch ... --classifier.weights FILE`")


def parse_weights(raw: bytes, suffix: str, what: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """`read_state_dict` on bytes already in memory (how Ray workers receive a classifier)."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    if suffix in (".pt", ".pth", ".bin"):
        try:
            state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - unpickling refused or corrupt
            raise CccError(f"weights file {what!r} is not a plain tensor state dict "
                           f"({str(error).splitlines()[0][:160]})") from None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise CccError(f"weights file {what!r} must hold a dict of tensors")
        return state, {}
    try:
        state = load(raw)
        header_size = int.from_bytes(raw[:8], "little")
        metadata = json.loads(raw[8:8 + header_size]).get("__metadata__") or {}
    except (SafetensorError, ValueError, OSError) as error:
        raise CccError(f"weights file {what!r} is corrupted or not safetensors ({error})") from None
    return state, metadata


def load_classifier(path: str | Path, image_shape: tuple[int, int, int] | None = None,
                    num_classes: int | None = None) -> tuple[nn.Module, ClassifierInfo]:
    """Rebuild a classifier saved by `save_classifier`, in eval mode on the CPU, checked against the data."""
    file = Path(path)
    refuse_onnx(str(file))
    if not file.is_file():
        raise CccError(f"weights file {str(file)!r} does not exist")
    return classifier_from_bytes(file.read_bytes(), str(file), image_shape, num_classes)


def classifier_from_bytes(raw: bytes, path: str, image_shape: tuple[int, int, int] | None = None,
                          num_classes: int | None = None) -> tuple[nn.Module, ClassifierInfo]:
    """`load_classifier` on the file's bytes; `path` only names it in errors."""
    refuse_onnx(path)
    state, metadata = parse_weights(raw, ".safetensors", path)
    if METADATA_KEY not in metadata:
        raise CccError(f"weights file {str(path)!r} has no ccc-ray classifier metadata; "
                       "train it with `ccc-ray train-classifier`, or pass it as classifier.weights")
    meta = json.loads(metadata[METADATA_KEY])
    config = config_from_dict(ClassifierConfig, meta["config"], "classifier")
    shape = tuple(meta["image_shape"])
    names = tuple(meta["class_names"])
    if image_shape is not None and tuple(image_shape) != shape:
        raise CccError(f"classifier {str(path)!r} expects images of shape {'x'.join(map(str, shape))}, "
                       f"the data has {'x'.join(map(str, image_shape))}")
    if num_classes is not None and num_classes != len(names):
        raise CccError(f"classifier {str(path)!r} has {len(names)} classes, the data has {num_classes}")
    reject = bool(meta.get("reject_class", False))
    model = build_classifier(config, shape, len(names) + int(reject))
    guard = meta.get("guard")
    if guard is not None:  # the saved guard's buffers (training images, distances) load with the weights
        model = empty_guard(model, guard, reject)
    load_weights_into(model, state, str(path))
    model.eval()
    info = ClassifierInfo(config, shape, names, meta.get("data_name", "?"), fingerprint(model), reject, guard)
    if meta.get("sha256") and meta["sha256"] != info.sha256:
        raise CccError(f"weights file {str(path)!r} does not match its recorded fingerprint (corrupted)")
    return model, info


def load_weights_into(model: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Strict load with a one-line error instead of torch's multi-line one."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first = str(error).splitlines()
        raise CccError(f"weights {what!r} do not fit the model: {' '.join(first[1:2] or first)[:300]}") from None


def load_initial_weights(model: nn.Module, config: ClassifierConfig, image_shape, num_classes) -> None:
    """Apply `config.weights` (a starting point for fine-tuning or a user model) if given.

    A ccc-ray classifier file loads into the whole classifier; any other state dict is the user's own and
    loads into their model, behind the preprocessing (whose buffers come from the config).
    """
    if config.weights:
        state, metadata = read_state_dict(config.weights)
        load_weights_into(model if METADATA_KEY in metadata else user_model(model), state, config.weights)
        check_classifier_fits(model, image_shape, num_classes, config.arch)
