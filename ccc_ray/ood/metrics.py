"""OOD detection metrics over scores where higher = more in-distribution, as in OpenOOD and pytorch-ood.

Positive class: **in-distribution is positive** for AUROC, `aupr_in` and the TPR of FPR95; `aupr_out`
is the same precision-recall area with OOD as the positive class (scores negated), so both readings of
"AUPR" in the literature are reported.

- `auroc`: probability that a random in-distribution image scores above a random OOD one (ties count 1/2);
  the same whichever class is positive.
- `fpr95`: the share of OOD images accepted (score >= threshold) at `threshold95`, the largest threshold
  that accepts at least 95% of the in-distribution images.
- `clean_accuracy`: top-1 accuracy on in-distribution images.

The threshold depends on in-distribution scores alone, so `acceptance_threshold` calibrates a deployed
model (the ONNX metadata) on held-out real images, with no OOD set at hand.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ccc_ray.errors import CccError

TPR_TARGET = 0.95


def _as_scores(scores: torch.Tensor | np.ndarray, what: str) -> np.ndarray:
    """1-D float64 numpy copy of `scores`, checked to be finite."""
    if isinstance(scores, torch.Tensor):
        scores = scores.detach().cpu().double().numpy()
    array = np.asarray(scores, dtype=np.float64)
    if array.ndim != 1:
        raise CccError(f"{what}: scores must be a 1-D vector (one score per image), got shape {array.shape}")
    if not np.isfinite(array).all():
        raise CccError(f"{what}: scores contain NaN or infinity; check the classifier's logits")
    return array


def _check_both_groups(in_scores: np.ndarray, out_scores: np.ndarray) -> None:
    if in_scores.size == 0 or out_scores.size == 0:
        empty = "in-distribution" if in_scores.size == 0 else "OOD"
        raise CccError(f"OOD metrics need both in-distribution and OOD scores; the {empty} group is empty "
                       f"({in_scores.size} in-distribution, {out_scores.size} OOD)")


def acceptance_threshold(in_scores: torch.Tensor | np.ndarray, tpr: float = TPR_TARGET) -> float:
    """The largest threshold t with mean(in_scores >= t) >= tpr: accepting score >= t keeps `tpr` of them."""
    if not 0 < tpr <= 1:
        raise CccError(f"acceptance_threshold: tpr must lie in (0, 1], got {tpr}")
    scores = _as_scores(in_scores, "acceptance_threshold")
    if scores.size == 0:
        raise CccError("acceptance_threshold: no in-distribution scores to calibrate on")
    # The k highest scores must all be accepted, k = ceil(tpr * n); a tiny slack keeps 0.95 * 20 at 19.
    k = math.ceil(tpr * scores.size - 1e-9)
    return float(np.sort(scores)[::-1][k - 1])


def ood_metrics(in_scores: torch.Tensor | np.ndarray,
                out_scores: torch.Tensor | np.ndarray) -> dict[str, float | int]:
    """AUROC, AUPR (in- and out-positive), FPR95 and its threshold, from the two groups' scores."""
    # Imported here: scikit-learn (scipy with it) costs ~1 s to import on 2 cores, paid by every Ray worker
    # process that imports the job config otherwise, though only evaluation computes metrics.
    from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

    scores_in = _as_scores(in_scores, "in-distribution scores")
    scores_out = _as_scores(out_scores, "OOD scores")
    _check_both_groups(scores_in, scores_out)
    scores = np.concatenate([scores_in, scores_out])
    is_in = np.concatenate([np.ones(scores_in.size, dtype=np.int64), np.zeros(scores_out.size, dtype=np.int64)])
    # Every threshold kept (drop_intermediate=False), so the first reaching 95% TPR is the exact one.
    fpr, tpr, thresholds = roc_curve(is_in, scores, drop_intermediate=False)
    at = int(np.argmax(tpr >= TPR_TARGET - 1e-12))
    return {
        "auroc": float(roc_auc_score(is_in, scores)),
        "aupr_in": float(average_precision_score(is_in, scores)),
        "aupr_out": float(average_precision_score(1 - is_in, -scores)),
        "fpr95": float(fpr[at]),
        "threshold95": float(thresholds[at]),
        "num_in": int(scores_in.size),
        "num_out": int(scores_out.size),
    }


def clean_accuracy(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Top-1 accuracy of N x K logits against int64 targets N.

    For a model with a reject class pass all K + 1 logits: a real image sent to "reject" counts as wrong.
    """
    if logits.dim() != 2 or targets.dim() != 1 or logits.shape[0] != targets.shape[0]:
        raise CccError(f"clean_accuracy: need logits N x K and targets N, got {tuple(logits.shape)} "
                       f"and {tuple(targets.shape)}")
    if targets.numel() == 0:
        raise CccError("clean_accuracy: no images to measure")
    return float((logits.argmax(dim=1) == targets.to(logits.device)).double().mean())


class OODMetrics:
    """Streaming accumulator (pytorch-ood style): `update` per batch, `compute` once at the end.

    Keeps every score (8 bytes per image on the CPU), because AUROC and FPR95 need the whole ranking;
    `compute` equals `ood_metrics` on the concatenated scores.
    """

    def __init__(self) -> None:
        self._in: list[np.ndarray] = []
        self._out: list[np.ndarray] = []

    def update(self, scores: torch.Tensor, is_in_distribution: torch.Tensor | bool) -> None:
        """Add a batch: `scores` float N, `is_in_distribution` bool N (or one bool for the whole batch)."""
        batch = _as_scores(scores, "OODMetrics.update")
        if isinstance(is_in_distribution, bool):
            flags = np.full(batch.size, is_in_distribution)
        else:
            flags = np.asarray(torch.as_tensor(is_in_distribution).detach().cpu().numpy()).reshape(-1)
            if flags.size != batch.size:
                raise CccError(f"OODMetrics.update: {batch.size} scores but {flags.size} in-distribution flags")
            flags = flags.astype(bool)
        self._in.append(batch[flags])
        self._out.append(batch[~flags])

    def compute(self) -> dict[str, float | int]:
        """The metrics of `ood_metrics` over everything seen since construction or `reset`."""
        empty = np.empty(0)
        return ood_metrics(np.concatenate(self._in or [empty]), np.concatenate(self._out or [empty]))

    def reset(self) -> None:
        self._in, self._out = [], []
