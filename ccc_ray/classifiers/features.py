"""Penultimate features and logits in one forward pass, for any classifier.

Our SmallCNN exposes `forward_features`; for other models (torchvision, user factories) the input of
the last `nn.Linear` is captured with a forward hook, which is the penultimate layer in every common
classification architecture. Models with no Linear layer fall back to the logits themselves.
"""

from __future__ import annotations

import torch
from torch import nn


def _last_linear(model: nn.Module) -> nn.Linear | None:
    last = None
    for module in model.modules():
        if isinstance(module, nn.Linear):
            last = module
    return last


def features_and_logits(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N x F features, N x K logits) for images N x C x H x W."""
    inner = model  # a plain module: core code never sees a DDP wrapper
    if hasattr(inner, "forward_features") and hasattr(inner, "head"):
        features = inner.forward_features(images)
        return features, inner.head(features)
    linear = _last_linear(inner)
    if linear is None:
        logits = model(images)
        return logits, logits
    captured: list[torch.Tensor] = []
    handle = linear.register_forward_hook(lambda _m, inputs, _out: captured.append(inputs[0]))
    try:
        logits = model(images)
    finally:
        handle.remove()
    return captured[-1].flatten(1), logits
