"""ONNX export and inference: the deployed form of a (hardened) classifier.

The names below load their module on first use: `onnx` (with ml_dtypes) costs ~0.9 s to import on 2 cores,
and the attack search imports `ccc_ray.export.onnx_runtime` in every Ray worker that unpickles a job
config, none of which exports a model.
"""

from __future__ import annotations

import importlib

_HOMES = {"OnnxMetadata": "metadata", "check_parity": "onnx_export", "export_onnx": "onnx_export",
          "OnnxClassifier": "onnx_runtime", "choose_providers": "onnx_runtime"}
__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
