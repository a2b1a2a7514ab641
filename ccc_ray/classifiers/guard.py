"""The data guard: a hardened classifier that cannot be confident far from its training data.

Retraining moves where a classifier is fooled; it does not stop a fresh attacker from finding another
far-away image that the model calls a digit at 0.99 (issue 12: 85-92% of fresh search attacks still
succeed after adaptive hardening). The attacks that count are the far ones (`ccc_ray/counterfeits/far.py`), so
the guard makes "far" and "confident" exclusive by construction, as Meinke & Hein's certified
uncertainty (CCU, ICLR 2020) does with densities: the model's answer is mixed with "reject" by how far
the image lies from the training set.

    d(x)  = L2 distance (pixels in [0, 1]) from x to its nearest training image
    g(x)  = sigmoid(slope * (reject_distance - d(x)))        the weight of the classifier's own answer
    p'_k  = g(x) * p_k                                       every class, and with a reject output:
    p'_r  = g(x) * p_r + (1 - g(x))                          the rest goes to "reject"
    (no reject output: p'_k = g(x) * p_k + (1 - g(x)) / K, the rest spread evenly, as in CCU)

Two distances fix g, both fitted on the training images alone (each one's distance to its nearest
*other* training image, which matches held-out real images' distances: on digits the 50th-99th
percentiles agree within 0.02), so the test split stays an honest measurement:

- `edge_distance`, the `edge_percentile`-th percentile (default 90): from here on g <= `cap` (0.98), so
  no image at or beyond it reaches the 0.99 bar; the far rule's radius (95th percentile of held-out real
  images) lies beyond it, so every far image is capped;
- `reject_distance`, the `reject_percentile`-th percentile (default 99.9): g = 1/2 there, so farther images
  are answered "reject" (or near uniform), while a real image inside it keeps its argmax: clean accuracy
  does not move (on digits no held-out real image lies beyond it).

What it costs (measured in docs/BENCHMARKS.md, issue 12): real images beyond the edge (10% of them by
construction) are answered with confidence below the bar, though with the same class; the model carries
its training images (M x C x H x W values: 0.4 MB for digits, 12.5 MB for mnist_5k), **so the model file
and its ONNX export contain the training data** — do not ship a guarded model where the training images
must stay private; and every forward pass computes M distances. The guarantee holds in pixel space, which
is where "far" is defined for small images; for images above `far.auto_pixel_limit` values pixel distance
says little and the guard is off by default (`--harden.guard auto`).

Contract: images float32 N x C x H x W in [0, 1] -> N x W logits, W the wrapped classifier's width;
softmax of them is p' above; differentiable (an attacker's gradient points back toward the data).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ccc_ray.errors import CccError

CALIBRATION_CHUNK = 2048  # training images per distance block when fitting (bounds memory)


def leave_one_out_distances(images: torch.Tensor) -> torch.Tensor:
    """Float32 M: each image's L2 distance to its nearest *other* image of the set."""
    flat = images.flatten(1).float()
    out = []
    for start in range(0, len(flat), CALIBRATION_CHUNK):
        block = torch.cdist(flat[start:start + CALIBRATION_CHUNK], flat)
        rows = torch.arange(len(block))
        block[rows, rows + start] = float("inf")
        out.append(block.min(dim=1).values)
    return torch.cat(out)


class DataGuard(nn.Module):
    """`classifier` whose answer fades into "reject" with the distance to the nearest training image."""

    def __init__(self, classifier: nn.Module, reference: torch.Tensor, edge_distance: float,
                 reject_distance: float, cap: float, reject_class: bool):
        super().__init__()
        if reference.dim() != 2 or len(reference) == 0:
            raise CccError(f"data guard: needs M x D reference images with M >= 1, got {tuple(reference.shape)}")
        if not 0 < edge_distance < reject_distance:
            raise CccError(f"data guard: the edge distance ({edge_distance:.4g}) must be positive and below the "
                           f"reject distance ({reject_distance:.4g}); raise harden.guard_reject_percentile")
        if not 0.5 < cap < 1:
            raise CccError(f"data guard: the cap must lie in (0.5, 1), got {cap}")
        self.classifier = classifier
        self.reject_class = reject_class
        self.register_buffer("reference", reference.float().contiguous())
        self.register_buffer("reference_sq_norms", reference.float().pow(2).sum(dim=1))
        slope = math.log(cap / (1 - cap)) / (reject_distance - edge_distance)
        self.register_buffer("guard_constants", torch.tensor([edge_distance, reject_distance, cap, slope],
                                                             dtype=torch.float32))

    @classmethod
    def empty(cls, classifier: nn.Module, count: int, values: int, reject_class: bool) -> "DataGuard":
        """A guard of the right shapes to load a saved one's state into."""
        return cls(classifier, torch.zeros(count, values), 1.0, 2.0, 0.9, reject_class)

    @classmethod
    def fit(cls, classifier: nn.Module, train_images: torch.Tensor, edge_percentile: float,
            reject_percentile: float, cap: float, reject_class: bool) -> "DataGuard":
        """Distances fitted on the training images' own leave-one-out nearest distances."""
        if len(train_images) < 2:
            raise CccError(f"data guard: needs at least 2 training images, got {len(train_images)}")
        if not 0 < edge_percentile < reject_percentile <= 100:
            raise CccError(f"data guard: need 0 < edge percentile < reject percentile <= 100, got "
                           f"{edge_percentile} and {reject_percentile}")
        distances = leave_one_out_distances(train_images).double()
        edge = float(torch.quantile(distances, edge_percentile / 100))
        reject = float(torch.quantile(distances, reject_percentile / 100))
        return cls(classifier, train_images.flatten(1).float().cpu(), edge, reject, cap, reject_class)

    @property
    def edge_distance(self) -> float:
        return float(self.guard_constants[0])

    @property
    def reject_distance(self) -> float:
        return float(self.guard_constants[1])

    def nearest_distance(self, images: torch.Tensor) -> torch.Tensor:
        """Float N: distance to the nearest training image (|x|^2 - 2 x.r + |r|^2: one matmul, exportable)."""
        flat = images.flatten(1).float()
        squared = (flat.pow(2).sum(dim=1, keepdim=True) - 2 * flat @ self.reference.t()
                   + self.reference_sq_norms[None, :])
        return squared.min(dim=1).values.clamp_min(1e-12).sqrt()

    def log_weight(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(log g, log(1 - g)) per image."""
        reject_distance, slope = self.guard_constants[1], self.guard_constants[3]
        z = slope * (reject_distance - self.nearest_distance(images))
        return F.logsigmoid(z), F.logsigmoid(-z)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.classifier(images).float()
        scale = torch.logsumexp(logits, dim=1, keepdim=True)  # kept, so max_logit still reads the model
        log_p = logits - scale
        log_g, log_not_g = (t[:, None] for t in self.log_weight(images))
        if self.reject_class:
            classes = log_p[:, :-1] + log_g
            rejected = _logaddexp(log_p[:, -1:] + log_g, log_not_g)
            return torch.cat([classes, rejected], dim=1) + scale
        return _logaddexp(log_p + log_g, log_not_g - math.log(logits.shape[1])) + scale

    def describe(self) -> dict:
        """The fitted guard for reports and the classifier file's metadata."""
        edge, reject, cap, slope = (float(v) for v in self.guard_constants)
        return {"space": "pixels", "reference_images": int(self.reference.shape[0]),
                "values_per_image": int(self.reference.shape[1]), "edge_distance": edge,
                "reject_distance": reject, "cap": cap, "slope": slope, "reject_class": self.reject_class}


def _logaddexp(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """log(e^a + e^b) from max, exp and log: ops every ONNX opset and runtime has."""
    top = torch.maximum(a, b)
    return top + torch.log(torch.exp(a - top) + torch.exp(b - top))


def unguarded(model: nn.Module) -> nn.Module:
    """The classifier inside a guard, or `model` itself."""
    return model.classifier if isinstance(model, DataGuard) else model
