"""Hardening's re-attack figure: a fresh sample of a trained attack, judged against the model it attacks.

The sample runs on `generate`'s pipeline (`ccc_ray/orchestration/generation.py`): the same sample plan
(chunks of `generate.batch_size`, targets class-major), in this process below `IN_PROCESS_LIMIT` samples,
else (or with `--generate.num_actors N`) on a Ray Data actor pool, each actor holding the generator and the
attacked classifier once, one GPU each when `run.use_gpu` resolves true. Each chunk has its own seed
(`attack_chunk_seed`), so the figure does not depend on the engine or the number of actors. Only four
verdicts per sample come back (confident, accepted, far, wrong by a judge); the shares are computed here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ccc_ray.counterfeits.far import FarFromData
from ccc_ray.counterfeits.judge import Judge
from ccc_ray.counterfeits.generate import sample_plan
from ccc_ray.data.sources import DataConfig, load_dataset
from ccc_ray.evaluate import AttackJudgement, attack_shares, judge_attack_chunk
from ccc_ray.job import JobConfig
from ccc_ray.methods.generator_file import load_generator
from ccc_ray.orchestration.generation import GeneratorActor, actor_count, chunk_pipeline
from ccc_ray.orchestration.ray_runtime import ensure_ray, resolve_use_gpu

VERDICTS = ("confident", "accepted", "far", "wrong")  # AttackJudgement's fields, in order


class AttackJudge(GeneratorActor):
    """The re-attack's actor: sample a chunk and return each sample's three verdicts."""

    def __init__(self, generator_bytes: bytes, classifier_bytes: bytes, classifier_path: str, data: DataConfig,
                 use_gpu: bool, per_class: int, seed: int, score: str, ood_threshold: float, confidence_bar: float,
                 far: FarFromData | None, judges: list[Judge]):
        super().__init__(generator_bytes, classifier_bytes, classifier_path, data, use_gpu)
        self.per_class, self.seed, self.far, self.judges = per_class, seed, far, judges
        self.score, self.ood_threshold, self.confidence_bar = score, ood_threshold, confidence_bar

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        judged = [judge_attack_chunk(self.method, self.classifier, self.dataset, self.per_class, int(chunk),
                                     int(start), int(stop), seed=self.seed,
                                     reject_class=self.classifier_info.reject_class, score=self.score,
                                     ood_threshold=self.ood_threshold, confidence_bar=self.confidence_bar,
                                     device=self.device, far=self.far, judges=self.judges)
                  for chunk, start, stop in zip(batch["chunk"], batch["start"], batch["stop"])]
        verdicts = AttackJudgement.concatenate(judged)
        return {name: getattr(verdicts, name).numpy() for name in VERDICTS}


def reattack_success(job: JobConfig, generator_file: Path, model_path: Path, model: torch.nn.Module,
                     reject_class: bool, score: str, ood_threshold: float, far: FarFromData | None,
                     device: torch.device | str, judges: list[Judge] = ()) -> dict[str, float]:
    """`attack_success_rate` of `generate.per_class` fresh samples per class from `generator_file` against the
    classifier at `model_path` (`model`, the same file loaded here), judged by `judges` near the data:
    report.json's `attack` figures."""
    dataset = load_dataset(job.data)
    per_class = job.generate.per_class
    plan = sample_plan(dataset.num_classes, per_class, job.generate.batch_size)
    actors = actor_count(job)
    if actors:
        ensure_ray()
        use_gpu = resolve_use_gpu(job.run)
        batches = chunk_pipeline(
            plan, AttackJudge,
            {"generator_bytes": generator_file.read_bytes(), "classifier_bytes": model_path.read_bytes(),
             "classifier_path": str(model_path), "data": job.data, "use_gpu": use_gpu, "per_class": per_class,
             "seed": job.generate.seed, "score": score, "ood_threshold": ood_threshold,
             "confidence_bar": job.keep.confidence_bar, "far": far, "judges": list(judges)},
            actors, use_gpu, job.generate.cpus_per_actor)
        judged = [AttackJudgement(*(torch.from_numpy(batch[name]) for name in VERDICTS))
                  for batch in batches]
    else:
        method, _ = load_generator(generator_file, device, model)
        judged = [judge_attack_chunk(method, model, dataset, per_class, chunk, start, stop, seed=job.generate.seed,
                                     reject_class=reject_class, score=score, ood_threshold=ood_threshold,
                                     confidence_bar=job.keep.confidence_bar, device=device, far=far,
                                     judges=judges)
                  for chunk, start, stop in plan]
    return attack_shares(AttackJudgement.concatenate(judged), far is not None)
