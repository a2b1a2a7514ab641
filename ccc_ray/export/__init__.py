"""ONNX export and inference: the deployed form of a (hardened) classifier."""

from ccc_ray.export.metadata import OnnxMetadata
from ccc_ray.export.onnx_export import check_parity, export_onnx
from ccc_ray.export.onnx_runtime import OnnxClassifier, choose_providers

__all__ = ["OnnxClassifier", "OnnxMetadata", "check_parity", "choose_providers", "export_onnx"]
