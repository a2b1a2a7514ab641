"""OOD evaluation of one classifier: the same in-distribution test set against several OOD sets.

Every figure the hardening report shows comes from here, for the baseline and for each hardened round
alike: clean accuracy, and per OOD set and score AUROC, AUPR, FPR at 95% TPR. The acceptance threshold
is calibrated on the in-distribution test set (95% of it accepted), and the re-attack success rate is
the share of a fresh attack's samples that reach the confidence bar on their target and pass it.

Both are built from per-row values (`score_images`: a few OOD scores per image; `judge_attack`: three
verdicts per attack sample), so a large set can be scored in batches elsewhere (Ray Data actors,
`ccc_ray/orchestration/evaluation.py`) and only those values judged here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ccc_ray.classifiers.training import predict_logits
from ccc_ray.counterfeits.judge import judged_success
from ccc_ray.counterfeits.keep import score_as_stored
from ccc_ray.ood.metrics import acceptance_threshold, ood_metrics
from ccc_ray.ood.scores import ood_score

BASE_SCORES = ("max_softmax", "max_logit", "negative_energy")
REATTACK_SEED_OFFSET = 7_919  # re-attack samples for the success rate use other latents than the store
REATTACK_CHUNK_STRIDE = 1_000_003  # seeds of a re-attack's later chunks: chunk 0 keeps seed + offset


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


def row_scores(logits: torch.Tensor, reject_class: bool) -> dict[str, np.ndarray]:
    """Every applicable OOD score of each row of `logits` (N x K, or K + 1): name -> float32 N."""
    return {name: ood_score(name, logits, reject_class).numpy() for name in applicable_scores(reject_class)}


def score_images(classifier, images: torch.Tensor, reject_class: bool,
                 device: torch.device | str = "cpu") -> dict[str, np.ndarray]:
    """`row_scores` of images (float32 N x C x H x W in [0, 1]): what evaluation keeps of an OOD image, a
    few floats a row, so a set can be scored in batches anywhere (a Ray Data actor) and judged later."""
    return row_scores(predict_logits(classifier, images, device), reject_class)


def evaluation_from_scores(clean_accuracy: float, primary_score: str, reject_class: bool,
                           scores_in: dict[str, np.ndarray],
                           scores_out: dict[str, dict[str, np.ndarray]]) -> Evaluation:
    """The figures of `evaluate_classifier` from per-row scores: the in-distribution test set's and each OOD
    set's (set -> score -> float N), however they were computed."""
    if primary_score not in applicable_scores(reject_class):
        primary_score = "max_softmax"  # a baseline has no reject output to read
    scores = applicable_scores(reject_class)
    metrics = {set_name: {name: ood_metrics(scores_in[name], by_score[name]) for name in scores}
               for set_name, by_score in scores_out.items()}
    return Evaluation(clean_accuracy, primary_score, acceptance_threshold(scores_in[primary_score]), metrics,
                      scores_in, scores_out)


def evaluate_classifier(classifier, reject_class: bool, test_images: torch.Tensor, test_labels: torch.Tensor,
                        ood_sets: dict[str, torch.Tensor], primary_score: str,
                        device: torch.device | str = "cpu") -> Evaluation:
    """Score the in-distribution test set and every OOD set with every applicable score, in this process."""
    logits_in = predict_logits(classifier, test_images, device)
    clean = float((logits_in.argmax(1) == test_labels).double().mean())
    scores_out = {set_name: score_images(classifier, images, reject_class, device)
                  for set_name, images in ood_sets.items()}
    return evaluation_from_scores(clean, primary_score, reject_class, row_scores(logits_in, reject_class), scores_out)


@dataclass
class AttackJudgement:
    """Per attack sample, the three verdicts of `attack_success_rate` (bool N each)."""

    confident: torch.Tensor  # kept by the keep rule: confident on its target, on the stored image
    accepted: torch.Tensor  # the OOD score accepts it (score >= the threshold)
    far: torch.Tensor  # far from the data by the fitted far rule (all True without one)
    wrong: torch.Tensor  # near the data and named another class than the target by a judge (judge.py)

    @staticmethod
    def concatenate(parts: list["AttackJudgement"]) -> "AttackJudgement":
        return AttackJudgement(*(torch.cat([getattr(part, name) for part in parts]).bool()
                                 for name in ("confident", "accepted", "far", "wrong")))


def judge_attack(classifier, reject_class: bool, images: torch.Tensor, targets: torch.Tensor, score: str,
                 ood_threshold: float, confidence_bar: float, device: torch.device | str = "cpu",
                 far=None, judges=()) -> AttackJudgement:
    """The verdicts on each attack sample (float32 N x C x H x W in [0, 1], targets int64 N); see
    `attack_success_rate`. Per sample, so a sample can be judged in batches anywhere."""
    scored = score_as_stored(images, targets, classifier, confidence_bar, device)
    if score not in applicable_scores(reject_class):
        score = "max_softmax"
    accepted = ood_score(score, scored.logits, reject_class) >= ood_threshold
    is_far = far.is_far(scored.stored) if far is not None else torch.ones_like(scored.kept)
    wrong = torch.zeros_like(scored.kept)
    for judge in judges:
        wrong |= judged_success(scored.kept & accepted, is_far, judge, scored.stored, targets.cpu())[1]
    return AttackJudgement(scored.kept, accepted, is_far, wrong)


def attack_chunk_seed(seed: int, chunk: int) -> int:
    """The latent seed of chunk `chunk` of a re-attack with `generate.seed` `seed`: per chunk, so the samples
    do not depend on who samples which chunk (in process, or any number of Ray Data actors)."""
    return seed + REATTACK_SEED_OFFSET + chunk * REATTACK_CHUNK_STRIDE


def judge_attack_chunk(method, classifier, dataset, per_class: int, chunk: int, start: int, stop: int, *,
                       seed: int, reject_class: bool, score: str, ood_threshold: float, confidence_bar: float,
                       device: torch.device | str = "cpu", far=None, judges=()) -> AttackJudgement:
    """Sample rows [start, stop) of a re-attack's plan (targets class-major, `per_class` each, as `generate`'s
    `sample_plan`) from a trained method's generator, and judge them (`judge_attack`)."""
    targets = torch.arange(dataset.num_classes).repeat_interleave(per_class)[start:stop]
    images = method.sample_with_lineage(targets, attack_chunk_seed(seed, chunk), dataset).images
    return judge_attack(classifier, reject_class, images, targets, score, ood_threshold, confidence_bar, device, far,
                        judges)


def attack_shares(judgement: AttackJudgement, far_rule: bool) -> dict[str, float]:
    """report.json's re-attack figures from the verdicts on every sample (`attack_success_rate`)."""
    confident, accepted, is_far = judgement.confident, judgement.accepted, judgement.far
    fooled = confident & accepted
    success = fooled & (is_far | judgement.wrong)
    return {"confident_share": float(confident.double().mean()), "accepted_share": float(accepted.double().mean()),
            "confident_and_accepted_share": float(fooled.double().mean()),
            "near_share": float((fooled & ~is_far).sum() / fooled.sum()) if fooled.any() else 0.0,
            "confirmed_share": float((fooled & ~success).sum() / fooled.sum()) if fooled.any() else 0.0,
            "far_success_rate": float((fooled & is_far).double().mean()),
            "success_rate": float(success.double().mean()), "far_rule": far_rule, "samples": int(len(confident))}


def attack_success_rate(classifier, reject_class: bool, images: torch.Tensor, targets: torch.Tensor,
                        score: str, ood_threshold: float, confidence_bar: float,
                        device: torch.device | str = "cpu", far=None, judges=()) -> dict[str, float]:
    """Share of attack samples that fool the classifier: kept by the keep rule (confident on their target,
    on the stored image), accepted by the OOD detector (score >= `ood_threshold`) and, given the fitted far
    rule `far` (`counterfeits/far.py`), not of the target as the scorecard counts: far from the data, or near
    it and named another class by one of `judges` (`counterfeits/judge.py`); `near_share` is the share of the
    confident and accepted samples that were near, `confirmed_share` of those the judges name the target (not
    counted)."""
    return attack_shares(judge_attack(classifier, reject_class, images, targets, score, ood_threshold,
                                      confidence_bar, device, far, judges), far is not None)
