"""Widen a trained K-class classifier to K + 1 outputs, so "reject" hardening fine-tunes from the baseline.

The last `nn.Linear` (in registration order: `head` of SmallCNN, `fc` of a ResNet, the end of a
torchvision `classifier` block) becomes one with an extra output row. The old rows and biases are copied,
so the first K logits are exactly the baseline's; the new row and bias start at zero, so the reject logit
starts at 0 for every image (rejecting little on confident images, more on ambiguous ones) and its
gradient, (p_reject - y_reject) * features, is non-zero from the first step without any random draw.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ccc_ray.errors import CccError


def _last_linear(model: nn.Module) -> tuple[nn.Module, str, nn.Linear]:
    """(parent module, attribute name, layer) of the last nn.Linear registered in `model`."""
    found = [(name, module) for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not found:
        raise CccError(f"cannot add a reject class: {type(model).__name__} has no nn.Linear output layer")
    name, layer = found[-1]
    parent_name, _, attribute = name.rpartition(".")
    return model.get_submodule(parent_name), attribute, layer


def widen_classifier(model: nn.Module, image_shape: tuple[int, int, int] | None = None) -> nn.Module:
    """A copy of `model` whose last nn.Linear has one more output (the reject class); `model` is untouched.

    With `image_shape` (C, H, W), one forward pass of zeros checks that this layer really is the output.
    """
    widened = copy.deepcopy(model)
    parent, attribute, old = _last_linear(widened)
    # skip_init: every value is set below, and a default init would draw from (and shift) the global RNG.
    new = nn.utils.skip_init(nn.Linear, old.in_features, old.out_features + 1, bias=old.bias is not None,
                             device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:old.out_features].copy_(old.weight)
        if old.bias is not None:
            new.bias.zero_()
            new.bias[:old.out_features].copy_(old.bias)
    setattr(parent, attribute, new)  # also right for nn.Sequential, whose children are named "0", "1", ...
    if image_shape is not None:
        _check_widened(model, widened, image_shape, old.out_features)
    return widened


def _output_width(model: nn.Module, images: torch.Tensor) -> int:
    """Width of the model's output in eval mode (no batch-norm statistics touched), mode restored."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return int(model(images).shape[-1])
    finally:
        model.train(was_training)


def _check_widened(model: nn.Module, widened: nn.Module, image_shape: tuple[int, int, int], width: int) -> None:
    """The last registered nn.Linear need not be the output layer of a user's model: prove it was."""
    images = torch.zeros(2, *image_shape, device=next(widened.parameters()).device)
    try:
        widths = (_output_width(model, images), _output_width(widened, images))
    except RuntimeError as error:  # a layer after it no longer fits its input
        raise CccError(f"cannot add a reject class: after widening the last nn.Linear the model fails "
                       f"({str(error).splitlines()[0][:200]}), so that layer is not the output layer") from None
    if widths != (width, width + 1):
        raise CccError(f"cannot add a reject class: widening the last nn.Linear ({width} outputs) changed the "
                       f"model's outputs from {widths[0]} to {widths[1]}, so it is not the output layer")
