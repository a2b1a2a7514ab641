"""Adaptive hardening: attackers keep adapting while the classifier trains (pure PyTorch, no Ray).

A reject class learned from a fixed pool of counterfeits holds against those counterfeits and falls to a
fresh attack (issue 3: 92% re-attack success). What helps is training against the hardest outliers of
the moment, made against the classifier as it is now:

- **re-inversion** (Suhail et al., "Network Inversion for Uncertainty-Aware OOD Detection", 2025: all
  classes inverted after every epoch): here an inversion generator takes `attacker_steps` steps against
  the current classifier before every classifier step, a min-max game;
- **outlier mining** (Chen et al., "ATOM: Robustifying Out-of-distribution Detection Using Outlier
  Mining", ECML PKDD 2021): of a pool of candidate outliers, train on those the classifier accepts most
  (the lowest OOD score);
- **adversarial outliers** (Madry et al., PGD, ICLR 2018; used on outliers by ATOM and by Chen et al.'s
  ALOE): a few signed-gradient steps inside an L-infinity ball push each outlier toward being accepted
  as a real class, and the classifier learns to reject the result.

Only outliers far from the data may carry the reject label: an attacker that drifts toward real digits
would otherwise teach the model to reject digits (an earlier probe lost 23-30 points of clean accuracy
that way). "Far" is the project's one far rule (`ccc_ray/counterfeits/far.py`), passed in fitted.

Contract: images float32 N x C x H x W in [0, 1]; classifiers map images to N x (K + 1) logits (the last
output rejects).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ccc_ray.counterfeits.far import FarFromData
from ccc_ray.errors import CccError
from ccc_ray.methods.map_elites import classifier_eval_mode

def hardest_outliers(logits: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of the `count` rows (of N x (K + 1) logits) with the lowest reject probability: the
    outliers the classifier accepts most (ATOM's mining; its score is 1 - p_reject here)."""
    if logits.dim() != 2 or logits.shape[1] < 3:
        raise CccError(f"hardest_outliers: logits must be N x (K + 1) with K >= 2, got {tuple(logits.shape)}")
    count = max(0, min(count, len(logits)))
    p_reject = logits.float().softmax(dim=1)[:, -1]
    return torch.topk(p_reject, count, largest=False).indices


def pgd_toward_classes(classifier: nn.Module, images: torch.Tensor, targets: torch.Tensor, steps: int,
                       epsilon: float, step_size: float | None = None) -> torch.Tensor:
    """Images moved by `steps` signed-gradient steps up log p(target) (softmax over all K + 1 outputs),
    kept within `epsilon` (L-infinity, pixel units) of the start and within [0, 1]; no gradient kept.

    The classifier runs in eval mode (no dropout noise in the attack) and its parameters get no gradient.
    `step_size` defaults to 2.5 * epsilon / steps (Madry et al.'s ratio).
    """
    if steps <= 0 or epsilon <= 0 or len(images) == 0:
        return images.detach()
    step_size = 2.5 * epsilon / steps if step_size is None else step_size
    start = images.detach()
    adversarial = start.clone()
    with classifier_eval_mode(classifier):
        for _ in range(steps):
            adversarial.requires_grad_(True)
            log_p = F.log_softmax(classifier(adversarial), dim=1).gather(1, targets[:, None]).sum()
            (gradient,) = torch.autograd.grad(log_p, adversarial)
            with torch.no_grad():
                adversarial = adversarial + step_size * gradient.sign()
                adversarial = torch.min(torch.max(adversarial, start - epsilon), start + epsilon).clamp(0, 1)
    return adversarial.detach()


def noise_images(count: int, image_shape: tuple[int, int, int], generator: torch.Generator) -> torch.Tensor:
    """Half uniform pixel noise, half smooth noise (4 x 4 upsampled), count x C x H x W in [0, 1]."""
    c, h, w = image_shape
    pixel = torch.rand(count // 2, c, h, w, generator=generator)
    coarse = torch.rand(count - count // 2, c, 4, 4, generator=generator)
    smooth = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    return torch.cat([pixel, smooth])


class AdaptiveOutliers:
    """The outliers of one classifier step, made against the classifier as it is at that step.

    Each step: the in-loop inversion generator (if `attacker_steps` > 0) takes that many steps against
    the classifier; a pool of `mine_pool` x `count` candidates is drawn in equal parts from the stored
    counterfeits, fresh noise and the generator; the `count` the classifier accepts most are kept
    (ATOM); each is pushed by PGD toward the class it is most accepted as; those far from the data are
    returned, to be labelled reject. The generator's state travels in `state_dict` for checkpoints.
    """

    def __init__(self, inversion, counterfeits: torch.Tensor, image_shape: tuple[int, int, int], far: FarFromData,
                 count: int, mine_pool: int, attacker_steps: int, pgd_steps: int, pgd_epsilon: float):
        if count < 1 or mine_pool < 1 or attacker_steps < 0 or pgd_steps < 0 or pgd_epsilon < 0:
            raise CccError(f"adaptive outliers: need count >= 1, mine_pool >= 1 and non-negative steps and "
                           f"epsilon, got count {count}, mine_pool {mine_pool}, attacker_steps {attacker_steps}, "
                           f"pgd_steps {pgd_steps}, pgd_epsilon {pgd_epsilon}")
        self.inversion = inversion  # a NetworkInversion whose context.classifier is the model being hardened
        self.counterfeits, self.image_shape, self.far = counterfeits, tuple(image_shape), far
        self.count, self.mine_pool = count, mine_pool
        self.attacker_steps, self.pgd_steps, self.pgd_epsilon = attacker_steps, pgd_steps, pgd_epsilon

    def attack(self, classifier: nn.Module, rng: torch.Generator) -> None:
        """The generator's steps against the classifier, whose parameters get no gradient from them."""
        if self.inversion is None or self.attacker_steps == 0:
            return
        trainable = [p for p in classifier.parameters() if p.requires_grad]
        for p in trainable:
            p.requires_grad_(False)
        try:
            with classifier_eval_mode(classifier):
                for _ in range(self.attacker_steps):
                    self.inversion.training_step(None, rng, self.count)
        finally:
            for p in trainable:
                p.requires_grad_(True)

    def candidates(self, rng: torch.Generator, device) -> torch.Tensor:
        """`mine_pool` x `count` candidates: stored counterfeits, noise and generator samples in equal parts."""
        total = self.count * self.mine_pool
        sources = 2 + (self.inversion is not None) - (len(self.counterfeits) == 0)
        share = -(-total // sources)
        parts = [noise_images(share, self.image_shape, rng).to(device)]
        if len(self.counterfeits):
            parts.append(self.counterfeits[torch.randint(len(self.counterfeits), (share,), generator=rng)].to(device))
        if self.inversion is not None:
            targets = torch.randint(self.inversion.num_classes, (share,), generator=rng)
            seed = int(torch.randint(2**62, (1,), generator=rng))
            parts.append(self.inversion.sample(targets, seed).detach())
        return torch.cat(parts)[:total]

    def outliers(self, classifier: nn.Module, rng: torch.Generator, device) -> torch.Tensor:
        """This step's outliers: attack, draw, mine, perturb, keep the far ones (at most `count`)."""
        self.attack(classifier, rng)
        pool = self.candidates(rng, device)
        with torch.no_grad(), classifier_eval_mode(classifier):
            logits = classifier(pool)
        if self.mine_pool > 1:
            keep = hardest_outliers(logits, self.count)
            pool, logits = pool[keep], logits[keep]
        if self.pgd_steps:
            pool = pgd_toward_classes(classifier, pool, logits[:, :-1].argmax(dim=1), self.pgd_steps,
                                      self.pgd_epsilon)
        return pool[self.far.is_far(pool.cpu()).to(pool.device)]

    def state_dict(self) -> dict:
        return self.inversion.state_dict() if self.inversion is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.inversion is not None and state:
            self.inversion.load_state_dict(state)
