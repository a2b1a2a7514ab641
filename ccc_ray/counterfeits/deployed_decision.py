"""The deployed decision as one classifier: "class k" only where the OOD score also accepts the image.

A hardened model answers in two steps: its class, and whether its OOD score accepts the image (score >=
`ood_threshold`). An attacker that maximises the class alone optimises the wrong thing: against a
reject-class model it may find confident images that the threshold still rejects. Every method already
optimises "the softmax probability of the target" of the classifier it is given, so instead of teaching
each method about OOD scores, the methods are given this wrapper, whose probabilities fold the
acceptance into the class:

    p_k      = softmax(logits)[k]                 (over all outputs, the reject output included)
    m        = score(logits) - ood_threshold      (the OOD margin, > 0 = accepted)
    gate     = sigmoid(logit(bar) + m / scale)    (= bar exactly at the threshold, -> 1 when well inside)
    p'_k     = min(p_k, gate)                     for every output k of the model
    p'_out   = 1 - sum_k p'_k                     (one extra output: "not accepted")

so p'_k >= bar exactly when p_k >= bar AND the score accepts the image: the wrapper's confidence bar is
the deployed decision's, the searches stop where the real criterion is met, and a gradient (or an
evolutionary fitness) always pushes on whichever of the two is failing. `scale` sets the gate's slope in
the score's own units; the scorecard takes a tenth of the way from a noise image's score to the
threshold (`deployed_threshold`), so a search that starts from noise has a gate that is small but
not vanishing (about 0.5% at the bar 0.99) and climbs all the way: with the spread of real images'
scores instead, a saturated score such as `not_reject` gave gates of e^-200 and gradient ascent on the
probability had nothing to follow. The logits returned are log p' (a softmax of them gives p' back), K + 1 wide, or K + 2 for a
reject-class model; the extra last output is never a target.

Contract: images float32 N x C x H x W in [0, 1] -> float32 N x (W + 1) log-probabilities, W the wrapped
model's width; differentiable where the wrapped model is (a torch module), black box otherwise.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ccc_ray.errors import CccError
from ccc_ray.ood.scores import ood_score

TINY = 1e-30  # floor of p' before the log: an image far outside the threshold still has a finite logit


class DeployedDecision(nn.Module):
    """A classifier wrapper whose target confidence reaches the bar only where the OOD score accepts."""

    def __init__(self, classifier, score: str, reject_class: bool, ood_threshold: float, confidence_bar: float,
                 scale: float):
        super().__init__()
        if not 0 < confidence_bar < 1:
            raise CccError(f"deployed decision: the confidence bar must lie in (0, 1) to fold the OOD threshold "
                           f"into it, got {confidence_bar}")
        if not math.isfinite(ood_threshold) or not scale > 0:
            raise CccError(f"deployed decision: need a finite OOD threshold and a positive score scale, got "
                           f"{ood_threshold} and {scale}")
        self.classifier = classifier  # an nn.Module is registered (eval mode and features reach it), else kept
        self.score = score
        self.reject_class = reject_class
        self.ood_threshold = float(ood_threshold)
        self.confidence_bar = float(confidence_bar)
        self.scale = float(scale)
        self.image_shape = getattr(classifier, "image_shape", None)  # an ONNX model says what it takes

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.classifier(images).float()
        margin = ood_score(self.score, logits, self.reject_class) - self.ood_threshold
        bar_logit = math.log(self.confidence_bar / (1 - self.confidence_bar))
        log_gate = F.logsigmoid(bar_logit + margin / self.scale)
        log_p = torch.minimum(torch.log_softmax(logits, dim=1), log_gate[:, None])
        rest = (1 - log_p.exp().sum(dim=1)).clamp_min(TINY)
        return torch.cat([log_p.clamp_min(math.log(TINY)), rest.log()[:, None]], dim=1)
