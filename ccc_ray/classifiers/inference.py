"""Ready a torch classifier for the attack searches, which only ever run it forward on large batches.

Convolution weights go to channels-last (NHWC) memory: oneDNN's NHWC kernels then skip the layout
reorders its NCHW path does on every call, which on the 8x8 digits CNN made the batched forward
1.4-1.8x faster on CPU (docs/BENCHMARKS.md, issue 4) at the same results (float rounding only: 2e-8 in
the softmax). Inputs stay ordinary NCHW tensors; convolutions follow the weights' layout. Only 4-D
tensors (convolution weights) change layout, so a model without convolutions is left as it was.
"""

from __future__ import annotations

import torch
from torch import nn


def prepare_for_attack(model: nn.Module, device: torch.device | str = "cpu") -> nn.Module:
    """`model` on `device` in eval mode, frozen (no parameter gradients), convolutions in channels-last."""
    return model.eval().requires_grad_(False).to(device, memory_format=torch.channels_last)


def default_device() -> torch.device:
    """CUDA when this process can use it, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
