"""The `tune` section of the job config."""

from __future__ import annotations

from dataclasses import dataclass

from ccc_ray.config import option
from ccc_ray.errors import CccError


@dataclass
class TuneSettings:
    search_space: str | None = option(None, "YAML search space (default: ccc_ray/configs/<method>-search.yaml)")
    num_samples: int = option(8, "trials to run")
    max_concurrent_trials: int = option(2, "trials running at once; bound it so the search fits the cluster")
    scheduler: str = option("asha", "asha (stop poor trials early) or fifo (run every trial to the end)")
    grace_period: int = option(2, "asha: reports (checkpoints) every trial gets before it may be stopped")
    reduction_factor: int = option(2, "asha: keep 1 in this many trials at each rung")
    score_per_class: int = option(20, "samples per class scored at each report for the objective")
    cpus_per_trial: float = option(1.0, "CPUs per trial's Train worker (run.num_workers workers per trial)")
    gpus_per_trial: float = option(0.0, "GPUs per trial's Train worker; > 0 trains on GPU")
    seed: int = option(0, "seed of the search algorithm")

    def validate(self) -> None:
        if self.num_samples < 1:
            raise CccError(f"tune.num_samples: must be at least 1, got {self.num_samples}")
        if self.max_concurrent_trials < 1:
            raise CccError(f"tune.max_concurrent_trials: must be at least 1, got {self.max_concurrent_trials}")
        if self.scheduler not in ("asha", "fifo"):
            raise CccError(f"tune.scheduler: must be asha or fifo, got {self.scheduler!r}")
        if self.grace_period < 1 or self.reduction_factor < 2:
            raise CccError("tune.grace_period must be >= 1 and tune.reduction_factor >= 2")
        if self.score_per_class < 2:
            raise CccError(f"tune.score_per_class: must be at least 2, got {self.score_per_class}")
        if self.cpus_per_trial <= 0 or self.gpus_per_trial < 0:
            raise CccError("tune.cpus_per_trial must be > 0 and tune.gpus_per_trial >= 0")
