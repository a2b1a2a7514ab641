"""Adversarial robustness of classifiers (pure PyTorch, no Ray): PGD and accuracy under attack."""

from ccc_ray.robustness.pgd import (
    ATTACKS,
    ClassLogits,
    PgdSettings,
    accuracy_under_pgd,
    pgd_attack,
    pgd_outcomes,
    robustness_table,
    wrong_class_loss,
)

__all__ = ["ATTACKS", "ClassLogits", "PgdSettings", "accuracy_under_pgd", "pgd_attack", "pgd_outcomes",
           "robustness_table", "wrong_class_loss"]
