"""Network inversion for Confidently Classified Counterfeits (CCC).

Paper: Suhail & Sethi, "Network Inversion for Generating Confidently Classified Counterfeits" (2025),
with the loss of "Network Inversion for Uncertainty-Aware OOD Detection" (2025, section 3) and the
feature-orthogonality term of "Network Inversion and Its Applications".

One generator, conditioned on the class, learns the inputs a frozen classifier maps to each class:
- conditioning: a latent z ~ N(0, I) concatenated with an embedding of the conditioning vector at the
  input, and the "hot conditioning matrix" (one plane per class, the vector's value broadcast over the
  plane) concatenated to the channels before every up-convolution, so later layers cannot ignore it;
- the conditioning vector is one-hot for CCC (default) or a softmaxed random vector (the predecessor);
- loss L = alpha * KL(P || Q) + beta * CE(label, Q) + gamma * L_cos + delta * L_orth, where Q is the
  classifier's softmax on the generated image, L_cos the mean cosine similarity between the classifier
  features of same-class generated images in a batch, and L_orth the distance of their Gram matrix from
  the identity; for a one-hot P the KL term equals the cross-entropy;
- heavy dropout in the up-convolutions against mode collapse.

Contract: `sample(targets, seed)` returns float32 N x C x H x W in [0, 1] (sigmoid output), the data's
value range.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ccc_ray.classifiers.features import features_and_logits
from ccc_ray.config import option
from ccc_ray.errors import CccError
from ccc_ray.methods.base import MethodContext, TrainedMethod, TrainingSchedule


@dataclass
class InversionConfig(TrainingSchedule):
    conditioning: Literal["one_hot", "soft"] = option("one_hot", "one_hot (CCC) or soft (the predecessor)")
    latent_dim: int = option(64, "size of the latent vector z", ge=1)
    embed_dim: int = option(32, "size of the learned embedding of the conditioning vector", ge=1)
    base_channels: int = option(64, "channels of the first feature map (halved at each up-convolution)", ge=1)
    dropout: float = option(0.3, "dropout after each up-convolution (heavy dropout against mode collapse)",
                            ge=0, lt=1)
    kl_weight: float = option(1.0, "alpha: KL(conditioning vector || classifier softmax)", ge=0)
    ce_weight: float = option(0.0, "beta: cross-entropy of the encoded label", ge=0)
    cosine_weight: float = option(0.1, "gamma: mean cosine similarity of same-class features", ge=0)
    orthogonality_weight: float = option(0.1, "delta: same-class feature Gram matrix pushed toward identity", ge=0)
    pixel_diversity_weight: float = option(0.1, "mean cosine similarity of same-class images (ours)", ge=0)
    soft_temperature: float = option(3.0, "soft conditioning: scale of the random logits before softmax")
    learning_rate: float = option(1e-3, "Adam learning rate", gt=0)
    beta1: float = option(0.5, "Adam beta1", ge=0, lt=1)

    def validate(self) -> None:
        if self.kl_weight + self.ce_weight <= 0:
            raise CccError("inversion: kl_weight + ce_weight must be positive, or nothing pulls toward the class")


class ConditionedGenerator(nn.Module):
    """z and a conditioning vector in, an image of `image_shape` out; conditioned at every depth."""

    def __init__(self, image_shape: tuple[int, int, int], num_classes: int, config: InversionConfig):
        super().__init__()
        channels, height, width = image_shape
        self.image_shape = image_shape
        self.num_classes = num_classes
        self.start = (max(1, -(-height // 4)), max(1, -(-width // 4)))  # two up-convolutions: x4
        c0, c1, c2 = config.base_channels, max(8, config.base_channels // 2), max(8, config.base_channels // 4)
        self.embed = nn.Linear(num_classes, config.embed_dim)
        self.project = nn.Sequential(
            nn.Linear(config.latent_dim + config.embed_dim, c0 * self.start[0] * self.start[1]),
            nn.BatchNorm1d(c0 * self.start[0] * self.start[1]), nn.LeakyReLU(0.2))
        self.up1 = nn.Sequential(nn.ConvTranspose2d(c0 + num_classes, c1, 4, 2, 1), nn.BatchNorm2d(c1),
                                 nn.LeakyReLU(0.2), nn.Dropout2d(config.dropout))
        self.up2 = nn.Sequential(nn.ConvTranspose2d(c1 + num_classes, c2, 4, 2, 1), nn.BatchNorm2d(c2),
                                 nn.LeakyReLU(0.2), nn.Dropout2d(config.dropout))
        self.out = nn.Conv2d(c2 + num_classes, channels, 3, padding=1)
        self.c0 = c0

    @staticmethod
    def _with_matrix(features: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """Concatenate the hot conditioning matrix: plane k holds condition[:, k] everywhere."""
        planes = condition[:, :, None, None].expand(-1, -1, features.shape[2], features.shape[3])
        return torch.cat([features, planes], dim=1)

    def forward(self, latent: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        x = self.project(torch.cat([latent, self.embed(condition)], dim=1))
        x = x.view(-1, self.c0, *self.start)
        x = self.up1(self._with_matrix(x, condition))
        x = self.up2(self._with_matrix(x, condition))
        x = torch.sigmoid(self.out(self._with_matrix(x, condition)))
        height, width = self.image_shape[1:]
        if x.shape[2:] != (height, width):
            x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)
        return x


def same_class_cosine(vectors: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cosine similarity over pairs i != j of the same target (0 when no such pair exists)."""
    unit = F.normalize(vectors.flatten(1), dim=1)
    similarity = unit @ unit.T
    same = (targets[:, None] == targets[None, :]) & ~torch.eye(len(targets), dtype=torch.bool, device=unit.device)
    return (similarity * same).sum() / same.sum().clamp(min=1)


def same_class_orthogonality(features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean squared off-diagonal Gram entry of unit features within each class: 0 when orthogonal."""
    unit = F.normalize(features.flatten(1), dim=1)
    gram = unit @ unit.T
    same = (targets[:, None] == targets[None, :]) & ~torch.eye(len(targets), dtype=torch.bool, device=unit.device)
    return (gram.pow(2) * same).sum() / same.sum().clamp(min=1)


class NetworkInversion(TrainedMethod):
    """The seed-000 method: a conditioned generator fitted against a frozen classifier."""

    name = "inversion"
    paper = ("Suhail & Sethi, Network Inversion for Generating Confidently Classified Counterfeits (2025); "
             "loss of Network Inversion for Uncertainty-Aware OOD Detection (2025)")
    kind = "generator"
    config_class = InversionConfig

    def __init__(self, config: InversionConfig, context: MethodContext):
        super().__init__(config, context)
        torch.manual_seed(config.seed)
        self.generator = ConditionedGenerator(self.image_shape, self.num_classes, config).to(self.device)
        self.optimizer = torch.optim.Adam(self.generator.parameters(), lr=config.learning_rate,
                                          betas=(config.beta1, 0.999))

    def modules(self) -> dict[str, nn.Module]:
        return {"generator": self.generator}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"generator": self.optimizer}

    def conditioning(self, targets: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The conditioning vector P for each target: one-hot, or a soft vector whose argmax is the target."""
        one_hot = F.one_hot(targets, self.num_classes).float()
        if self.config.conditioning == "one_hot":
            return one_hot
        logits = torch.randn(len(targets), self.num_classes, generator=generator, device=targets.device)
        soft = torch.softmax(logits * self.config.soft_temperature, dim=1)
        # Swap the largest entry into the target's place so argmax(P) == target.
        top = soft.argmax(dim=1)
        rows = torch.arange(len(targets), device=targets.device)
        top_value, target_value = soft[rows, top].clone(), soft[rows, targets].clone()
        soft[rows, top], soft[rows, targets] = target_value, top_value
        return soft

    def _draw(self, targets: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        latent = torch.randn(len(targets), self.config.latent_dim, generator=generator, device=self.device)
        return latent, self.conditioning(targets, generator)

    def losses(self, classifier: nn.Module, images: torch.Tensor, condition: torch.Tensor,
               targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every loss part for a generated batch; `total` is the weighted sum the optimiser sees."""
        cfg = self.config
        features, logits = features_and_logits(classifier, images)
        log_q = torch.log_softmax(logits, dim=1)
        if logits.shape[1] > condition.shape[1]:  # a hardened model's reject output: never a target
            condition = F.pad(condition, (0, logits.shape[1] - condition.shape[1]))
        parts = {
            "kl": F.kl_div(log_q, condition, reduction="batchmean"),
            "ce": F.nll_loss(log_q, targets),
            "cosine": same_class_cosine(features, targets),
            "orthogonality": same_class_orthogonality(features, targets),
            "pixel_cosine": same_class_cosine(images, targets),
        }
        parts["total"] = (cfg.kl_weight * parts["kl"] + cfg.ce_weight * parts["ce"]
                          + cfg.cosine_weight * parts["cosine"] + cfg.orthogonality_weight * parts["orthogonality"]
                          + cfg.pixel_diversity_weight * parts["pixel_cosine"])
        with torch.no_grad():
            parts["confidence"] = log_q.gather(1, targets[:, None]).exp().mean()
        return parts

    def training_step(self, batch, rng: torch.Generator, batch_size: int) -> dict[str, float]:
        """One Adam step on a fresh batch of latents, with classes cycled so every class is in every batch."""
        generator = self.trainable("generator")
        generator.train()
        targets = torch.arange(batch_size, device=self.device) % self.num_classes
        latent, condition = self._draw(targets, rng)
        images = generator(latent, condition)
        parts = self.losses(self.context.classifier, images, condition, targets)
        self.optimizer.zero_grad(set_to_none=True)
        parts["total"].backward()
        self.optimizer.step()
        self.step += 1
        return {name: float(value.detach()) for name, value in parts.items()}

    @torch.no_grad()
    def sample(self, targets: torch.Tensor, seed: int, sources: torch.Tensor | None = None) -> torch.Tensor:
        """Images for `targets` in eval mode (no dropout); the same seed gives the same images."""
        targets = self.check_targets(targets).to(self.device)
        self.generator.eval()
        generator = torch.Generator(device=self.device).manual_seed(seed)
        latent, condition = self._draw(targets, generator)
        return self.generator(latent, condition)
