"""Trained methods on disk: every module's weights (safetensors) plus what is needed to rebuild and audit them.

One file per trained method run: the modules it owns (generator, discriminator, a jointly trained
classifier), its method name and config, the image shape and class names, and the fingerprint of the
classifier it was trained against. No optimiser state: checkpoints hold that; this file is for sampling.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch

from ccc_ray.classifiers.weights import parse_weights
from ccc_ray.config import config_from_dict, validate_config
from ccc_ray.errors import CccError
from ccc_ray.methods import MethodContext, TrainedMethod, method_class
from ccc_ray.store.files import atomic_write_bytes

METADATA_KEY = "ccc_ray.generator"


def save_generator(path: str | Path, method: TrainedMethod, class_names: list[str], classifier_sha256: str) -> None:
    """Write the method's modules (not its optimisers) with its name, config and classifier lineage."""
    from safetensors.torch import save

    state = {f"{name}.{key}": tensor.detach().cpu().contiguous()
             for name, module in method.modules().items() for key, tensor in module.state_dict().items()}
    meta = {"method": method.name, "config": asdict(method.config), "image_shape": list(method.image_shape),
            "class_names": list(class_names), "classifier_sha256": classifier_sha256, "steps": method.step,
            "modules": sorted(method.modules())}
    atomic_write_bytes(path, save(state, metadata={METADATA_KEY: json.dumps(meta)}))


def load_generator(path: str | Path, device: torch.device | str = "cpu",
                   classifier=None) -> tuple[TrainedMethod, dict]:
    """(method ready to sample, metadata) from a file written by `save_generator`; CccError if it is not one."""
    file = Path(path)
    if not file.is_file():
        raise CccError(f"generator file {str(file)!r} does not exist; run `ccc-ray train-generator` first")
    state, metadata = parse_weights(file.read_bytes(), ".safetensors", str(file))
    if METADATA_KEY not in metadata:
        raise CccError(f"generator file {str(file)!r} has no ccc-ray generator metadata")
    meta = json.loads(metadata[METADATA_KEY])
    cls = method_class(meta["method"], f"generator file {str(file)!r}", kinds=("generator", "joint"))
    config = config_from_dict(cls.config_class, meta["config"], meta["method"])
    validate_config(config, f"{meta['method']}.")
    context = MethodContext(tuple(meta["image_shape"]), len(meta["class_names"]), classifier, device)
    method = cls(config, context)
    by_module: dict[str, dict] = {name: {} for name in method.modules()}
    if "modules" not in meta and len(by_module) == 1:  # written before modules were named: one, unprefixed
        state = {f"{next(iter(by_module))}.{key}": tensor for key, tensor in state.items()}
    for key, tensor in state.items():
        name, _, inner = key.partition(".")
        if name not in by_module:
            raise CccError(f"generator file {str(file)!r} holds weights of module {name!r}, which "
                           f"{meta['method']} does not have; it was written by another version")
        by_module[name][inner] = tensor
    try:
        method.load_state_dict({"modules": by_module, "step": int(meta.get("steps", 0))})
    except RuntimeError as error:
        raise CccError(f"generator file {str(file)!r} does not fit {meta['method']} with its saved config: "
                       f"{str(error).splitlines()[0]}") from None
    for module in method.modules().values():
        module.to(method.device)
    return method, meta
