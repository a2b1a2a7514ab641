"""The one keep rule: a counterfeit counts when the classifier is confident in its target on the image as
the store keeps it.

    stored = quantize(image)                       (uint8, exactly the bytes written)
    confidence = softmax(classifier(stored / 255))[target]
    kept = confidence >= confidence_bar

`generate`, `attack`, Tune's objective and hardening's re-attack all decide through `score_as_stored`,
so a row kept anywhere is a counterfeit at the stated confidence when read back. For a hardened model
with a reject output (K + 1 logits) the softmax runs over all K + 1 outputs.

The confidence bar is not the OOD acceptance threshold (`ood_threshold`: the score above which a
detector accepts an image as in-distribution); the two are named apart everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ccc_ray.config import option
from ccc_ray.counterfeits.quality import dequantize, quantize
from ccc_ray.methods.map_elites import classifier_eval_mode

SCORE_BATCH = 1024  # images per classifier call: bounds memory on large samples


@dataclass
class KeepRule:
    confidence_bar: float = option(0.99, "a counterfeit counts when the classifier's confidence in its target, "
                                         "measured on the stored uint8 image, is >= this (searches stop there)",
                                   gt=0, le=1)


@dataclass
class Scored:
    """A batch judged by the keep rule."""

    stored: torch.Tensor  # N x C x H x W uint8: the image as written to the store
    logits: torch.Tensor  # N x K (or K + 1) float32 on the CPU, of the stored image
    confidence: torch.Tensor  # N float32: softmax probability of the target
    predicted: torch.Tensor  # N int64: the classifier's top output
    kept: torch.Tensor  # N bool: confidence >= the bar

    @property
    def images(self) -> torch.Tensor:
        """The stored images as float32 in [0, 1]: what every later figure is measured on."""
        return dequantize(self.stored)


@torch.no_grad()
def score_as_stored(images: torch.Tensor, targets: torch.Tensor, classifier_fn, confidence_bar: float,
                    device: torch.device | str | None = None) -> Scored:
    """Quantize `images` (float32 N x C x H x W in [0, 1], or already uint8) as stored, score them, apply the bar."""
    stored = images if images.dtype == torch.uint8 else quantize(images.detach().cpu())
    stored = stored.cpu()
    targets = targets.cpu().long()
    if device is None:
        parameter = next(iter(getattr(classifier_fn, "parameters", lambda: iter(()))()), None)
        device = parameter.device if parameter is not None else "cpu"
    with classifier_eval_mode(classifier_fn):  # no dropout noise in a confidence that is stored
        logits = torch.cat([classifier_fn(dequantize(stored[i:i + SCORE_BATCH]).to(device)).float().cpu()
                            for i in range(0, len(stored), SCORE_BATCH)]) if len(stored) else torch.empty(0, 0)
    if not len(stored):
        empty = torch.empty(0)
        return Scored(stored, logits, empty, empty.long(), empty.bool())
    probabilities = torch.softmax(logits, dim=1)
    confidence = probabilities.gather(1, targets[:, None]).squeeze(1)
    return Scored(stored, logits, confidence, probabilities.argmax(1), confidence >= confidence_bar)
