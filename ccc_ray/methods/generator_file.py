"""Trained generators on disk: safetensors weights plus what is needed to rebuild and audit them."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from ccc_ray.classifiers.weights import load_weights_into, parse_weights
from ccc_ray.config import config_from_dict
from ccc_ray.errors import CccError
from ccc_ray.storage import atomic_write_bytes

METADATA_KEY = "ccc_ray.generator"


def save_generator(path: str | Path, method, image_shape: tuple[int, int, int], class_names: list[str],
                   classifier_sha256: str) -> None:
    """Write the generator's weights (not the optimiser) with its method, config and classifier lineage."""
    from safetensors.torch import save

    inner = getattr(method.generator, "module", method.generator)
    state = {name: t.detach().cpu().contiguous() for name, t in inner.state_dict().items()}
    meta = {"method": method.name, "config": asdict(method.config), "image_shape": list(image_shape),
            "class_names": list(class_names), "classifier_sha256": classifier_sha256, "steps": method.step}
    atomic_write_bytes(path, save(state, metadata={METADATA_KEY: json.dumps(meta)}))


def load_generator(path: str | Path, device="cpu"):
    """(method instance ready to sample, metadata dict) from a file written by `save_generator`."""
    from ccc_ray.methods import GENERATOR_METHODS

    file = Path(path)
    if not file.is_file():
        raise CccError(f"generator file {str(file)!r} does not exist; run `ccc-ray train-generator` first")
    state, metadata = parse_weights(file.read_bytes(), ".safetensors", str(file))
    if METADATA_KEY not in metadata:
        raise CccError(f"generator file {str(file)!r} has no ccc-ray generator metadata")
    meta = json.loads(metadata[METADATA_KEY])
    if meta["method"] not in GENERATOR_METHODS:
        raise CccError(f"generator file {str(file)!r} holds unknown method {meta['method']!r}")
    method_cls, config_cls = GENERATOR_METHODS[meta["method"]]
    config = config_from_dict(config_cls, meta["config"], "generator")
    method = method_cls(config, tuple(meta["image_shape"]), len(meta["class_names"]), device)
    load_weights_into(method.generator, state, str(file))
    method.step = int(meta.get("steps", 0))
    return method, meta
