"""The one rule for "far from the data": only far images count as counterfeits.

A confidently classified image that sits next to a training digit is not a counterfeit, it is a digit
(or a slightly noisy one); training it as "reject" would teach the classifier to reject real data, and
counting it as an attack success would credit the attacker for finding the data. So:

    d(x)   = distance from x to its nearest training image
    radius = the `percentile`-th percentile of d over the held-out real images (the test split)
    far(x) = d(x) >= radius

Why this reference: held-out real images are, by construction, new samples of the data that the
training set does not contain; their own nearest-training distances say how far genuine new data lies
from the training set. An image farther than 95% of them (the default) is farther than almost any real,
unseen sample of the data would be. The false-far rate on real data is then 5% by construction, the same
convention as the OOD acceptance threshold (which accepts 95% of the same held-out images), so the two
cuts are stated on one scale. Images at exactly the radius count as far, so the rule matches the
wording "at or above the percentile".

Which space: plain L2 over pixels in [0, 1] where pixel distance means something, i.e. small, centred,
aligned images (8x8 digits, 28x28 MNIST); for larger natural images pixel L2 is dominated by shifts and
lighting (a translated photo is "far", a flat grey image "near" to everything), so there the distance is
taken in the classifier's penultimate features (`features_and_logits`), where real images of a class
cluster. `space: auto` picks pixels for images of at most `auto_pixel_limit` values (C x H x W; 1,024
covers 32x32 grey and everything smaller) and features above. Feature space needs a torch classifier to
embed with (the run's baseline classifier: a fixed reference, so a hardened model cannot move the data).

Where it decides: the scorecard counts a success only when far; `generate` and `attack` store (and so
`harden` trains as "reject") only far counterfeits while `gate_store` is on (the default): a near image
that the classifier calls a digit with confidence may well be one.

Contract: images float32 N x C x H x W in [0, 1] (uint8 N x C x H x W is dequantized as stored); `is_far`
returns a bool N mask; `nearest` returns float32 N distances in the rule's space.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import torch

from ccc_ray.classifiers.features import features_and_logits
from ccc_ray.classifiers.weights import load_classifier
from ccc_ray.config import option
from ccc_ray.counterfeits.quality import dequantize, nearest_distances
from ccc_ray.errors import CccError

PIXELS, FEATURES = "pixels", "features"
EMBED_BATCH = 1024  # images per feature pass: bounds memory on large data sets


@dataclass
class FarRule:
    percentile: float = option(95.0, "an image is far from the data when its nearest-training distance is at or "
                                     "above this percentile of the held-out real images' own nearest-training "
                                     "distances (95: one real held-out image in twenty counts as far)", ge=50, le=100)
    space: Literal["auto", "pixels", "features"] = option(
        "auto", "where distance is measured: pixels (L2 over [0, 1] pixels), features (L2 over the baseline "
                "classifier's penultimate features), auto (pixels up to auto_pixel_limit values, else features)")
    auto_pixel_limit: int = option(1024, "auto: images with at most this many values (C x H x W) use pixel space",
                                   ge=1)
    gate_store: bool = option(True, "generate and attack store only confident samples that are also far, so "
                                    "harden trains nothing near the data as reject; false stores every confident one")

    def chosen_space(self, image_shape: tuple[int, int, int]) -> str:
        """pixels or features for images of `image_shape` (C, H, W)."""
        if self.space != "auto":
            return self.space
        channels, height, width = image_shape
        return PIXELS if channels * height * width <= self.auto_pixel_limit else FEATURES


Embedding = Callable[[torch.Tensor], torch.Tensor]  # images N x C x H x W -> N x F


def classifier_embedding(classifier: torch.nn.Module) -> Embedding:
    """The classifier's penultimate features as an embedding, in eval mode and without gradients."""
    device = next(iter(classifier.parameters()), torch.empty(0)).device

    @torch.no_grad()
    def embed(images: torch.Tensor) -> torch.Tensor:
        was_training = classifier.training
        classifier.eval()
        try:
            return torch.cat([features_and_logits(classifier, images[i:i + EMBED_BATCH].to(device))[0].float().cpu()
                              for i in range(0, len(images), EMBED_BATCH)]) if len(images) else torch.empty(0, 0)
        finally:
            classifier.train(was_training)

    return embed


@dataclass
class FarFromData:
    """The rule fitted on one run's data: the reference set, the space and the radius."""

    space: str  # PIXELS or FEATURES
    radius: float  # an image at this distance or more from every training image is far
    percentile: float
    reference: torch.Tensor  # the training images flattened (pixels) or their features: M x D float32
    embed: Embedding | None = None  # FEATURES: images -> features
    held_out_distances: torch.Tensor | None = None  # the held-out real images' nearest distances (figures)

    @classmethod
    def fit(cls, rule: FarRule, train_images: torch.Tensor, held_out_images: torch.Tensor,
            classifier: torch.nn.Module | None = None) -> "FarFromData":
        """Fit the radius on the run's train / held-out split; `classifier` embeds for feature space."""
        if len(train_images) == 0 or len(held_out_images) == 0:
            raise CccError(f"far rule: needs training and held-out real images, got {len(train_images)} and "
                           f"{len(held_out_images)}")
        space = rule.chosen_space(tuple(train_images.shape[1:]))
        embed = None
        if space == FEATURES:
            if not isinstance(classifier, torch.nn.Module):
                raise CccError("far.space: features needs a torch classifier to embed images with (the run's "
                               "classifier file, --run.classifier_path); pass --far.space pixels otherwise")
            embed = classifier_embedding(classifier)
            reference = embed(train_images)
        else:
            reference = train_images.flatten(1).float()
        rule_fit = cls(space, 0.0, rule.percentile, reference, embed)
        distances = rule_fit.nearest(held_out_images)
        rule_fit.radius = float(torch.quantile(distances.double(), rule.percentile / 100.0))
        rule_fit.held_out_distances = distances
        return rule_fit

    def nearest(self, images: torch.Tensor) -> torch.Tensor:
        """Float32 N: each image's distance to its nearest training image, in the rule's space."""
        if images.dim() != 4:
            raise CccError(f"far rule: images must be N x C x H x W, got shape {tuple(images.shape)}")
        images = dequantize(images) if images.dtype == torch.uint8 else images.float()
        points = self.embed(images) if self.embed is not None else images.flatten(1)
        if points.shape[1:] != self.reference.shape[1:]:
            raise CccError(f"far rule: images give {points.shape[1]} values per image, the training data "
                           f"{self.reference.shape[1]}; pass images of the data's shape")
        return nearest_distances(points, self.reference)

    def is_far(self, images: torch.Tensor) -> torch.Tensor:
        """Bool N: the images at or beyond the radius from every training image."""
        return self.nearest(images) >= self.radius

    def describe(self) -> dict:
        """The fitted rule for reports: space, percentile and radius."""
        return {"space": self.space, "percentile": self.percentile, "radius": self.radius}


def fit_far_rule(rule: FarRule, dataset, baseline_file: str | Path | None = None, model=None) -> FarFromData:
    """The rule fitted on a run's data (`dataset`: its train / test split); feature space embeds with the
    run's baseline classifier file when there is one (a fixed reference, so a hardened model cannot move
    the data), else with `model` when that is a torch module."""
    reference = None
    if rule.chosen_space(dataset.image_shape) == FEATURES:
        if baseline_file is not None and Path(baseline_file).is_file():
            reference, _ = load_classifier(baseline_file, dataset.image_shape, dataset.num_classes)
        elif isinstance(model, torch.nn.Module):
            reference = model
    return FarFromData.fit(rule, dataset.train_images, dataset.test_images, reference)
