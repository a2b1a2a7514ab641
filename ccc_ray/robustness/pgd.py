"""Projected gradient descent (PGD) under an L-infinity budget, and accuracy under it.

Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks" (ICLR 2018): start at a
uniform random point of the epsilon ball (random start), then `steps` times move `step_size` along the sign
of the loss gradient and project back onto the ball and onto the valid pixel range. Untargeted: the loss is
the cross-entropy of the true class over ALL the model's outputs, so for a K + 1 model (reject / fake as
the last output) the attack may also push an image to "reject", and a prediction counts as correct only
when it is the true class. Seed 002's paper reports PGD with 10 iterations, our default.

Contract: images float32 N x C x H x W in [0, 1]; labels int64 N in [0, K); the model maps images to
N x K or N x (K + 1) logits. Adversarial images stay in [0, 1] and within epsilon of the originals.
Seeded: the same seed gives the same random starts, so the same numbers on the same hardware.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ccc_ray.config import option
from ccc_ray.data.dataset import check_images
from ccc_ray.errors import CccError


@dataclass
class PgdSettings:
    """The attack's knobs; `step_size` None means 2.5 * epsilon / steps (Madry et al.'s rule of thumb)."""

    steps: int = option(10, "gradient steps per attack (the seed-002 paper: 10)", ge=0)
    step_size: float | None = option(None, "L-inf step per iteration; default 2.5 * epsilon / steps", gt=0)
    random_start: bool = option(True, "start at a uniform random point of the epsilon ball")
    seed: int = option(0, "seed of the random starts")
    batch_size: int = option(512, "images attacked at once", ge=1)


def pgd_attack(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, epsilon: float,
               settings: PgdSettings | None = None, generator: torch.Generator | None = None,
               loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Adversarial images (N x C x H x W in [0, 1], within `epsilon` in L-inf) raising the true-class loss.

    The model is used as given (call `.eval()` first for dropout-free gradients); its weights get no grads.
    `generator` (on the images' device) draws the random start. `loss_fn(logits, labels)`, a summed loss to
    raise, replaces the cross-entropy (e.g. `wrong_class_loss`: an attacker who wants a wrong class, not "fake").
    """
    loss_fn = loss_fn or (lambda logits, truth: F.cross_entropy(logits, truth, reduction="sum"))
    settings = settings or PgdSettings()
    if epsilon < 0:
        raise CccError(f"PGD epsilon must be >= 0, got {epsilon}")
    if epsilon == 0 or (settings.steps == 0 and not settings.random_start):
        return images.clone()
    step_size = settings.step_size if settings.step_size is not None else 2.5 * epsilon / max(settings.steps, 1)
    low, high = (images - epsilon).clamp(0, 1), (images + epsilon).clamp(0, 1)
    adversarial = images.clone()
    if settings.random_start:
        noise = torch.rand(images.shape, generator=generator, device=images.device)
        adversarial = torch.max(torch.min(images + (2 * noise - 1) * epsilon, high), low)
    for _ in range(settings.steps):
        adversarial.requires_grad_(True)
        loss = loss_fn(model(adversarial), labels)
        (gradient,) = torch.autograd.grad(loss, adversarial)
        with torch.no_grad():
            adversarial = torch.max(torch.min(adversarial + step_size * gradient.sign(), high), low)
    return adversarial.detach()


def wrong_class_loss(num_classes: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """For a K + 1 model: the summed log-probability (softmax over all outputs) of the K - 1 wrong classes.

    Raising it moves an image to some other class while keeping "fake"/reject low: the attacker of a
    deployment where a reject output is an abstention, who wants a wrong class that is accepted, not a
    rejection. On a K-output model it is the untargeted attack in another form.
    """
    def loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        log_probabilities = logits.log_softmax(dim=1)[:, :num_classes]
        wrong = log_probabilities.masked_fill(F.one_hot(labels, num_classes).bool(), float("-inf"))
        return wrong.logsumexp(dim=1).sum()

    return loss


class ClassLogits(nn.Module):
    """The first `num_classes` logits of a model: a K + 1 model's class head, its last output left out.

    Seed 002 reads the joint model's "fake" output as an uncertainty beside the prediction; attacking and
    scoring the class head alone measures the prediction's robustness in that reading.
    """

    def __init__(self, model: nn.Module, num_classes: int):
        super().__init__()
        self.model, self.num_classes = model, num_classes

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)[:, :self.num_classes]


def _check_inputs(images: torch.Tensor, labels: torch.Tensor) -> None:
    check_images(images, "PGD images")
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1 or len(labels) != len(images) \
            or labels.is_floating_point():
        raise CccError(f"PGD labels must be int64 of shape N={len(images)}, got "
                       f"{tuple(getattr(labels, 'shape', ()))}")


def accuracy_under_pgd(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, epsilon: float,
                       settings: PgdSettings | None = None) -> float:
    """Share of images whose prediction (argmax over all outputs) stays the true class after PGD at `epsilon`."""
    settings = settings or PgdSettings()
    _check_inputs(images, labels)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    generator = torch.Generator(device=device).manual_seed(settings.seed)
    correct = 0
    try:
        for start in range(0, len(images), settings.batch_size):
            batch = images[start:start + settings.batch_size].to(device)
            truth = labels[start:start + settings.batch_size].to(device).long()
            adversarial = pgd_attack(model, batch, truth, epsilon, settings, generator)
            with torch.no_grad():
                correct += int((model(adversarial).argmax(dim=1) == truth).sum())
    finally:
        model.train(was_training)
    return correct / len(images)


ATTACKS = ("class_head", "all_outputs", "wrong_class")


def pgd_outcomes(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, epsilon: float, num_classes: int,
                 attack: str = "all_outputs", settings: PgdSettings | None = None) -> dict[str, float]:
    """What a K + 1 model (reject / fake last) decides after PGD at `epsilon`, as shares of the images:
    correct, rejected (the last output on top) and wrong (another class on top) over all outputs, and
    `class_head`: the accuracy of the first K logits alone. `attack` is the threat model:
    - class_head: PGD on the K class logits (an attacker who ignores the reject output);
    - all_outputs: the true class's cross-entropy over all outputs (a rejection counts as the attack's success);
    - wrong_class: `wrong_class_loss` (an attacker who wants a wrong class accepted, not a rejection).
    Same random starts as `accuracy_under_pgd` for the same settings."""
    if attack not in ATTACKS:
        raise CccError(f"robustness.attack: {attack!r} is not one of {', '.join(ATTACKS)}")
    settings = settings or PgdSettings()
    _check_inputs(images, labels)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    target = ClassLogits(model, num_classes) if attack == "class_head" else model
    loss_fn = wrong_class_loss(num_classes) if attack == "wrong_class" else None
    generator = torch.Generator(device=device).manual_seed(settings.seed)
    counts = {"correct": 0, "rejected": 0, "wrong": 0, "class_head": 0}
    try:
        for start in range(0, len(images), settings.batch_size):
            batch = images[start:start + settings.batch_size].to(device)
            truth = labels[start:start + settings.batch_size].to(device).long()
            adversarial = pgd_attack(target, batch, truth, epsilon, settings, generator, loss_fn)
            with torch.no_grad():
                logits = model(adversarial)
            predicted = logits.argmax(dim=1)
            counts["correct"] += int((predicted == truth).sum())
            counts["rejected"] += int((predicted >= num_classes).sum())
            counts["wrong"] += int(((predicted != truth) & (predicted < num_classes)).sum())
            counts["class_head"] += int((logits[:, :num_classes].argmax(dim=1) == truth).sum())
    finally:
        model.train(was_training)
    return {name: count / len(images) for name, count in counts.items()}


def robustness_table(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, epsilons: list[float],
                     steps: int = 10, step_size: float | None = None, seed: int = 0,
                     random_start: bool = True, class_outputs: int | None = None) -> list[dict]:
    """One row per epsilon: {"epsilon", "accuracy", "steps", "step_size"}; epsilon 0 is clean accuracy.

    What `ccc-ray robustness` prints. Each epsilon's attack starts from the same seed, so rows compare.
    `class_outputs` K: attack and score only the first K logits (a K + 1 model's class head); None: all.
    """
    if not epsilons:
        raise CccError("robustness: give at least one epsilon (e.g. 0,0.05,0.1)")
    if class_outputs is not None:
        model = ClassLogits(model, class_outputs)
    rows = []
    for epsilon in epsilons:
        settings = PgdSettings(steps=steps, step_size=step_size, random_start=random_start, seed=seed)
        accuracy = accuracy_under_pgd(model, images, labels, float(epsilon), settings)
        used = step_size if step_size is not None else 2.5 * float(epsilon) / max(steps, 1)
        rows.append({"epsilon": float(epsilon), "accuracy": accuracy, "steps": steps, "step_size": used})
    return rows
