"""The small surface every counterfeit method shares, so the CLI, jobs, store and benchmarks treat them alike.

Contract for all methods: images are float32 N x C x H x W in [0, 1]; targets are int64 class indices.
The classifier is a callable from images to N x K logits: a torch module for white-box methods, or an
onnxruntime session wrapper for black-box ones.
"""

from __future__ import annotations

from typing import Callable, Protocol, runtime_checkable

import torch

ClassifierFn = Callable[[torch.Tensor], torch.Tensor]


@runtime_checkable
class CounterfeitMethod(Protocol):
    """What every method in `ccc_ray/methods/` offers."""

    name: str

    def sample(self, targets: torch.Tensor, seed: int) -> torch.Tensor:
        """Images N x C x H x W in [0, 1], one per entry of `targets` (int64, N); same seed, same images."""
        ...


@runtime_checkable
class TrainableMethod(CounterfeitMethod, Protocol):
    """A method with something to fit (a generator): one optimiser step at a time, so Ray drives the loop."""

    def training_step(self, classifier: torch.nn.Module, generator: torch.Generator) -> dict[str, float]:
        """One optimiser step against the frozen classifier; returns the loss parts as floats."""
        ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...
