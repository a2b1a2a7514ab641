"""Adversarial robustness of classifiers (pure PyTorch, no Ray): PGD and accuracy under attack."""

from ccc_ray.robustness.pgd import (
    ClassLogits,
    PgdSettings,
    accuracy_under_pgd,
    pgd_attack,
    robustness_table,
    wrong_class_loss,
)

__all__ = ["ClassLogits", "PgdSettings", "accuracy_under_pgd", "pgd_attack", "robustness_table",
           "wrong_class_loss"]
