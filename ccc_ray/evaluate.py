"""OOD evaluation of one classifier: the same in-distribution test set against several OOD sets.

Every figure the hardening report shows comes from here, for the baseline and for each hardened round
alike: clean accuracy, and per OOD set and score AUROC, AUPR, FPR at 95% TPR. The acceptance threshold
is calibrated on the in-distribution test set (95% of it accepted), and the re-attack success rate is
the share of a fresh attack's samples that reach the confidence bar on their target and pass it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ccc_ray.classifiers.training import predict_logits
from ccc_ray.counterfeits.keep import score_as_stored
from ccc_ray.ood.metrics import acceptance_threshold, ood_metrics
from ccc_ray.ood.scores import ood_score

BASE_SCORES = ("max_softmax", "max_logit", "negative_energy")


def applicable_scores(reject_class: bool) -> tuple[str, ...]:
    return BASE_SCORES + (("not_reject",) if reject_class else ())


@dataclass
class Evaluation:
    """Figures for report.json, plus the raw scores for ROC plots (not serialised)."""

    clean_accuracy: float
    primary_score: str
    ood_threshold: float  # the primary score's acceptance threshold: 95% of in-distribution test images pass
    metrics: dict[str, dict[str, dict[str, float]]]  # OOD set -> score -> metric -> value
    scores_in: dict[str, np.ndarray] = field(repr=False, default_factory=dict)
    scores_out: dict[str, dict[str, np.ndarray]] = field(repr=False, default_factory=dict)

    def to_dict(self) -> dict:
        return {"clean_accuracy": self.clean_accuracy, "score": self.primary_score, "threshold95": self.ood_threshold,
                "ood": self.metrics}


def evaluate_classifier(classifier, reject_class: bool, test_images: torch.Tensor, test_labels: torch.Tensor,
                        ood_sets: dict[str, torch.Tensor], primary_score: str,
                        device: torch.device | str = "cpu") -> Evaluation:
    """Score the in-distribution test set and every OOD set with every applicable score."""
    if primary_score not in applicable_scores(reject_class):
        primary_score = "max_softmax"  # a baseline has no reject output to read
    logits_in = predict_logits(classifier, test_images, device)
    clean = float((logits_in.argmax(1) == test_labels).double().mean())
    scores = applicable_scores(reject_class)
    scores_in = {name: ood_score(name, logits_in, reject_class).numpy() for name in scores}
    metrics: dict[str, dict[str, dict[str, float]]] = {}
    scores_out: dict[str, dict[str, np.ndarray]] = {}
    for set_name, images in ood_sets.items():
        logits_out = predict_logits(classifier, images, device)
        scores_out[set_name] = {name: ood_score(name, logits_out, reject_class).numpy() for name in scores}
        metrics[set_name] = {name: ood_metrics(scores_in[name], scores_out[set_name][name]) for name in scores}
    return Evaluation(clean, primary_score, acceptance_threshold(scores_in[primary_score]), metrics,
                      scores_in, scores_out)


def attack_success_rate(classifier, reject_class: bool, images: torch.Tensor, targets: torch.Tensor,
                        score: str, ood_threshold: float, confidence_bar: float,
                        device: torch.device | str = "cpu", far=None) -> dict[str, float]:
    """Share of attack samples that fool the classifier: kept by the keep rule (confident on their target,
    on the stored image), accepted by the OOD detector (score >= `ood_threshold`) and, given the fitted far
    rule `far` (`counterfeits/far.py`), far from the data, as the scorecard counts; `near_share` is the
    share of the confident and accepted samples that were near (not counted)."""
    scored = score_as_stored(images, targets, classifier, confidence_bar, device)
    if score not in applicable_scores(reject_class):
        score = "max_softmax"
    confident = scored.kept
    accepted = ood_score(score, scored.logits, reject_class) >= ood_threshold
    fooled = confident & accepted
    is_far = far.is_far(scored.stored) if far is not None else torch.ones_like(fooled)
    success = fooled & is_far
    return {"confident_share": float(confident.double().mean()), "accepted_share": float(accepted.double().mean()),
            "confident_and_accepted_share": float(fooled.double().mean()),
            "near_share": float((fooled & ~is_far).sum() / fooled.sum()) if fooled.any() else 0.0,
            "success_rate": float(success.double().mean()), "far_rule": far is not None, "samples": int(len(targets))}
