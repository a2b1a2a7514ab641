"""What an exported ONNX model says about itself, in the model's `metadata_props`.

One key per field, prefixed `ccc_ray.`, each value JSON (so a threshold stays a number and class names
with commas survive); any ONNX viewer (Netron, `onnx.load(...).metadata_props`) shows them as they are.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

from ccc_ray.errors import CccError
from ccc_ray.ood.scores import OOD_SCORES

PREFIX = "ccc_ray."


@dataclass(frozen=True)
class OnnxMetadata:
    """The deployment facts of one exported classifier."""

    class_names: tuple[str, ...]
    image_shape: tuple[int, int, int]
    classifier_sha256: str
    ood_score: str = "max_softmax"
    threshold: float | None = None
    reject_class: bool = False
    input_range: float = 1.0  # the model's input is raw images in [0, input_range] (1: the data contract)

    @property
    def num_outputs(self) -> int:
        """Width of the logits: the K classes, plus the reject output when there is one."""
        return len(self.class_names) + int(self.reject_class)

    def validate(self) -> None:
        if len(self.class_names) < 2 or len(set(self.class_names)) != len(self.class_names):
            raise CccError(f"ONNX metadata: need at least 2 distinct class names, got {list(self.class_names)}")
        if len(self.image_shape) != 3 or any(int(size) < 1 for size in self.image_shape):
            raise CccError(f"ONNX metadata: image_shape must be (C, H, W) of positive sizes, "
                           f"got {self.image_shape}")
        if self.ood_score not in OOD_SCORES:
            raise CccError(f"ONNX metadata: OOD score {self.ood_score!r} is not one of {', '.join(OOD_SCORES)}")
        if self.ood_score == "not_reject" and not self.reject_class:
            raise CccError("ONNX metadata: the not_reject score needs a model with a reject class")
        if not (isinstance(self.input_range, (int, float)) and math.isfinite(self.input_range)
                and self.input_range > 0):
            raise CccError(f"ONNX metadata: input_range must be a positive number, got {self.input_range!r}")
        if self.threshold is not None and not math.isfinite(self.threshold):
            raise CccError(f"ONNX metadata: threshold must be a finite number or none, got {self.threshold}")

    def to_props(self) -> dict[str, str]:
        """The `metadata_props` entries: `ccc_ray.<field>` -> JSON value."""
        return {PREFIX + name: json.dumps(value) for name, value in asdict(self).items()}

    @classmethod
    def from_props(cls, props: Mapping[str, str], where: str) -> OnnxMetadata | None:
        """Parse `to_props` output; None for a model with no ccc_ray keys (exported elsewhere)."""
        names = [f.name for f in fields(cls)]
        if not any(PREFIX + name in props for name in names):
            return None
        try:
            values: dict[str, Any] = {name: json.loads(props[PREFIX + name]) for name in names
                                      if PREFIX + name in props}
            metadata = cls(**{**values, "class_names": tuple(values["class_names"]),
                              "image_shape": tuple(values["image_shape"])})
        except (KeyError, TypeError, ValueError) as error:
            raise CccError(f"{where}: its ccc_ray metadata is incomplete or corrupted ({error!r})") from None
        metadata.validate()
        return metadata
