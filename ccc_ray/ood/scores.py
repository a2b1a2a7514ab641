"""OOD scores: plain functions of a classifier's logits, higher = more in-distribution.

Contract for every score: `logits` is float N x K (or N x (K+1) for a model with a reject class),
the result is float N. `reject_class=True` says the last column is the reject ("none of these")
output: the softmax and logit scores then look at the first K logits only, so the reject output
neither inflates the energy nor counts as a confident class, and `not_reject` reads the last one.

Scores as in the OOD literature (and OpenOOD / pytorch-ood, with their sign flipped where they score
"outlierness"):
- `max_softmax`: Hendrycks & Gimpel, "A Baseline for Detecting Misclassified and Out-of-Distribution
  Examples" (ICLR 2017);
- `max_logit`: Hendrycks et al., "Scaling Out-of-Distribution Detection for Real-World Settings" (2022);
- `negative_energy`: Liu et al., "Energy-based Out-of-distribution Detection" (NeurIPS 2020);
- `not_reject`: 1 - p(reject), the K+1-class models of Nguyen et al. (2015) and the network-inversion
  OOD paper;
- `inversion_certainty`: 1 - UE(p), UE from Suhail et al., "Network Inversion for Uncertainty-Aware
  OOD Detection" (2025).
"""

from __future__ import annotations

from typing import Callable

import torch

from ccc_ray.errors import CccError

ScoreFn = Callable[..., torch.Tensor]


def _class_logits(logits: torch.Tensor, reject_class: bool, score: str) -> torch.Tensor:
    """The logits of the K real classes, after checking the N x K shape."""
    if logits.dim() != 2:
        raise CccError(f"{score}: logits must be N x K, got shape {tuple(logits.shape)}")
    min_width = 3 if reject_class else 2
    if logits.shape[1] < min_width:
        what = "K + 1 >= 3 columns (K >= 2 classes and the reject class)" if reject_class else "K >= 2 columns"
        raise CccError(f"{score}: logits need {what}, got {logits.shape[1]}")
    return logits[:, :-1] if reject_class else logits


def max_softmax(logits: torch.Tensor, reject_class: bool = False) -> torch.Tensor:
    """Largest softmax probability over the K classes."""
    return _class_logits(logits, reject_class, "max_softmax").softmax(dim=1).amax(dim=1)


def max_logit(logits: torch.Tensor, reject_class: bool = False) -> torch.Tensor:
    """Largest of the K class logits (not squashed by the softmax, so it keeps the scale of the evidence)."""
    return _class_logits(logits, reject_class, "max_logit").amax(dim=1)


def negative_energy(logits: torch.Tensor, reject_class: bool = False, temperature: float = 1.0) -> torch.Tensor:
    """Negative free energy, T * logsumexp(logits / T) over the K classes (Liu et al. use T = 1)."""
    if temperature <= 0:
        raise CccError(f"negative_energy: temperature must be positive, got {temperature}")
    class_logits = _class_logits(logits, reject_class, "negative_energy")
    return temperature * torch.logsumexp(class_logits / temperature, dim=1)


def not_reject(logits: torch.Tensor, reject_class: bool = True) -> torch.Tensor:
    """1 - softmax probability of the reject class (the last of the K + 1 outputs)."""
    if not reject_class:
        raise CccError("not_reject: this score needs a model with a reject class (K + 1 outputs); "
                       "pass reject_class=True, or pick max_softmax, max_logit or negative_energy")
    _class_logits(logits, True, "not_reject")
    return 1.0 - logits.softmax(dim=1)[:, -1]


def inversion_uncertainty(probs: torch.Tensor) -> torch.Tensor:
    """UE(p) = 1 - sum_i (p_i - 1/m)^2 / sum_i (delta_ik - 1/m)^2 over m outputs, k = argmax p.

    0 for a one-hot p, 1 for the uniform p. The denominator is (m - 1) / m whatever k is, so UE costs
    one pass over p. `probs` is N x m, rows summing to 1 (the paper's m = n + 1 includes its garbage class).
    """
    if probs.dim() != 2 or probs.shape[1] < 2:
        raise CccError(f"inversion_uncertainty: probabilities must be N x m with m >= 2, got {tuple(probs.shape)}")
    m = probs.shape[1]
    spread = (probs - 1.0 / m).square().sum(dim=1)
    return 1.0 - spread * m / (m - 1)


def inversion_certainty(logits: torch.Tensor, reject_class: bool = False) -> torch.Tensor:
    """1 - UE(p), p the softmax over the K classes (the reject output is left to `not_reject`)."""
    return 1.0 - inversion_uncertainty(_class_logits(logits, reject_class, "inversion_certainty").softmax(dim=1))


# name -> score; every score is called as score(logits, reject_class=...).
OOD_SCORES: dict[str, ScoreFn] = {
    "max_softmax": max_softmax,
    "max_logit": max_logit,
    "negative_energy": negative_energy,
    "not_reject": not_reject,
    "inversion_certainty": inversion_certainty,
}


def ood_score(name: str, logits: torch.Tensor, reject_class: bool = False) -> torch.Tensor:
    """The score called `name` (a key of `OOD_SCORES`) of each row of `logits`; higher = more in-distribution."""
    if name not in OOD_SCORES:
        raise CccError(f"OOD score {name!r} is not known; choose one of {', '.join(OOD_SCORES)}")
    return OOD_SCORES[name](logits, reject_class=reject_class)
