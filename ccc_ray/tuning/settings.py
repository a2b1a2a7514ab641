"""The `tune` section of the job config."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ccc_ray.config import option


@dataclass
class TuneSettings:
    search_space: str | None = option(None, "YAML search space (default: the method's own, "
                                                   "ccc_ray/configs/<method>-search.yaml)")
    num_samples: int = option(8, "trials to run", ge=1)
    max_concurrent_trials: int = option(2, "trials running at once; bound it so the search fits the cluster", ge=1)
    scheduler: Literal["asha", "fifo"] = option("asha", "asha (stop poor trials early) or fifo (run every trial "
                                                        "to the end)")
    grace_period: int = option(2, "asha: reports (checkpoints) every trial gets before it may be stopped", ge=1)
    reduction_factor: int = option(2, "asha: keep 1 in this many trials at each rung", ge=2)
    score_per_class: int = option(20, "samples per class scored at each report for the objective", ge=2)
    cpus_per_trial: float = option(1.0, "CPUs per Train worker of a trial (run.num_workers workers per trial)",
                                   gt=0)
    gpus_per_trial: float = option(0.0, "GPUs per Train worker of a trial; > 0 trains on GPU", ge=0)
    seed: int = option(0, "seed of the search algorithm")
