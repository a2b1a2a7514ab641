"""The job config: every section in one typed tree, shared by all subcommands and Ray workers.

One YAML shape serves every stage (`train-classifier`, `train-generator`, `generate`, `pipeline`), so a
file written by one stage or by a Tune search is accepted unchanged by the others.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ccc_ray.classifiers.build import ClassifierConfig
from ccc_ray.config import option
from ccc_ray.data.sources import DataConfig
from ccc_ray.errors import CccError
from ccc_ray.methods.cppn import CppnConfig
from ccc_ray.methods.direct_encoding import DirectEncodingConfig
from ccc_ray.methods.gradient_ascent import GradientAscentConfig
from ccc_ray.methods.inversion import InversionConfig
from ccc_ray.store.writer import check_name
from ccc_ray.tuning.settings import TuneSettings


@dataclass
class RunSettings:
    run_id: str = option("default", "name of this run: outputs go to output_dir/run_id; the same id resumes")
    output_dir: str = option("ccc-runs", "folder for classifier, generator, counterfeits and reports")
    storage_path: str | None = option(None, "Ray Train checkpoint storage every node can reach "
                                            "(default: output_dir/run_id/ray; use NFS or s3:// on clusters)")
    classifier_path: str | None = option(None, "classifier file (default: output_dir/run_id/classifier.safetensors)")
    generator_path: str | None = option(None, "generator file (default: output_dir/run_id/generator-<method>.safetensors)")
    store_path: str | None = option(None, "Parquet counterfeit store folder or URI, e.g. s3://bucket/prefix "
                                          "(default: output_dir/run_id/counterfeits)")
    num_workers: int = option(1, "Ray Train workers (data-parallel); one is right for small data")
    use_gpu: bool | None = option(None, "train on GPUs: true, false, or none = when the cluster has GPUs")
    cpus_per_worker: float = option(1.0, "CPUs reserved per Ray Train worker")
    checkpoint_every: int = option(100, "generator: checkpoint every N steps (the classifier checkpoints every epoch)")
    max_failures: int = option(0, "worker failures Ray Train recovers from (restoring the last checkpoint)")

    def validate(self) -> None:
        check_name(self.run_id, "run.run_id")
        if self.num_workers < 1:
            raise CccError(f"run.num_workers: must be at least 1, got {self.num_workers}")
        if self.cpus_per_worker <= 0:
            raise CccError(f"run.cpus_per_worker: must be positive, got {self.cpus_per_worker}")
        if self.checkpoint_every < 1:
            raise CccError(f"run.checkpoint_every: must be at least 1, got {self.checkpoint_every}")
        if self.max_failures < -1:
            raise CccError(f"run.max_failures: must be -1 (unlimited) or >= 0, got {self.max_failures}")

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir).absolute() / self.run_id

    @property
    def classifier_file(self) -> Path:
        return Path(self.classifier_path).absolute() if self.classifier_path else self.run_dir / "classifier.safetensors"

    def generator_file(self, method: str) -> Path:
        return Path(self.generator_path).absolute() if self.generator_path else self.run_dir / f"generator-{method}.safetensors"

    @property
    def store_dir(self) -> Path | str:
        """The counterfeit store folder; a URI (s3://, gs://, ...) is kept as it is."""
        if self.store_path and "://" in self.store_path:
            return self.store_path
        return Path(self.store_path).absolute() if self.store_path else self.run_dir / "counterfeits"

    @property
    def ray_storage(self) -> str:
        if self.storage_path and "://" in self.storage_path:
            return self.storage_path
        return os.fspath(Path(self.storage_path).absolute() if self.storage_path else self.run_dir / "ray")


@dataclass
class GenerateSettings:
    method: str = option("inversion", "which trained generator samples the counterfeits")
    per_class: int = option(100, "counterfeits sampled per class")
    threshold: float = option(0.99, "keep counterfeits whose target confidence (on the stored uint8 image) >= this")
    seed: int = option(1, "seed of the latent draws")
    batch_size: int = option(1000, "images sampled and scored per batch (bounds memory)")

    def validate(self) -> None:
        from ccc_ray.methods import GENERATOR_METHODS

        if self.method not in GENERATOR_METHODS:
            raise CccError(f"generate.method: unknown method {self.method!r}; choose {', '.join(GENERATOR_METHODS)}")
        if not 0 < self.threshold <= 1:
            raise CccError(f"generate.threshold: must lie in (0, 1], got {self.threshold}")
        if self.per_class < 1:
            raise CccError(f"generate.per_class: must be at least 1, got {self.per_class}")
        if self.batch_size < 1:
            raise CccError(f"generate.batch_size: must be at least 1, got {self.batch_size}")


@dataclass
class HardenSettings:
    mode: Literal["reject", "oe"] = option("reject", "reject: a (K+1)-th 'none of these' class for counterfeits; "
                                                     "oe: outlier exposure, uniform softmax on counterfeits")
    stores: list[str] = option([], "counterfeit stores (Parquet files or folders) to pool; default: this run's store")
    rounds: int = option(1, "attack -> harden -> re-attack rounds; each round pools the counterfeits of all before")
    epochs: int = option(10, "fine-tuning epochs per round (from the baseline classifier)")
    learning_rate: float = option(5e-4, "Adam learning rate of the fine-tuning")
    batch_size: int = option(128, "in-distribution images per step (summed over workers)")
    outlier_weight: float = option(0.5, "oe: weight (lambda) of the uniform cross-entropy on counterfeits")
    noise_images: int = option(500, "reject: noise images that seed the reject class next to the counterfeits")
    eval_fraction: float = option(0.3, "share of counterfeit rows held out for evaluation (split by row id)")
    split_seed: int = option(0, "seed of the train/evaluation split of counterfeit rows")
    ood_score: str = option("auto", "OOD score for thresholds and the ONNX export: auto (not_reject for reject, "
                                    "max_softmax for oe), max_softmax, max_logit, negative_energy, not_reject")
    reattack_steps: int | None = option(None, "generator steps of each re-attack (default: generator.steps)")
    real_ood_per_set: int = option(500, "images per real OOD set in the evaluation")
    seed: int = option(0, "seed of fine-tuning and noise images")

    def validate(self) -> None:
        from ccc_ray.ood.scores import OOD_SCORES

        if self.rounds < 1:
            raise CccError(f"harden.rounds: must be at least 1, got {self.rounds}")
        if self.epochs < 1:
            raise CccError(f"harden.epochs: must be at least 1, got {self.epochs}")
        if not self.learning_rate > 0:
            raise CccError(f"harden.learning_rate: must be positive, got {self.learning_rate}")
        if self.batch_size < 2:
            raise CccError(f"harden.batch_size: must be at least 2, got {self.batch_size}")
        if not self.outlier_weight >= 0:
            raise CccError(f"harden.outlier_weight: must be >= 0, got {self.outlier_weight}")
        if self.noise_images < 0:
            raise CccError(f"harden.noise_images: must be >= 0, got {self.noise_images}")
        if not 0 < self.eval_fraction < 1:
            raise CccError(f"harden.eval_fraction: must lie in (0, 1), got {self.eval_fraction}")
        if self.ood_score != "auto" and self.ood_score not in OOD_SCORES:
            raise CccError(f"harden.ood_score: {self.ood_score!r} is not auto or one of {', '.join(OOD_SCORES)}")
        if self.ood_score == "not_reject" and self.mode != "reject":
            raise CccError("harden.ood_score: not_reject needs harden.mode reject")
        if self.reattack_steps is not None and self.reattack_steps < 1:
            raise CccError(f"harden.reattack_steps: must be at least 1, got {self.reattack_steps}")
        if self.real_ood_per_set < 10:
            raise CccError(f"harden.real_ood_per_set: must be at least 10, got {self.real_ood_per_set}")

    @property
    def score(self) -> str:
        if self.ood_score != "auto":
            return self.ood_score
        return "not_reject" if self.mode == "reject" else "max_softmax"


@dataclass
class AttackSettings:
    method: str = option("direct_encoding", "search method: direct_encoding or cppn (MAP-Elites evolution, black "
                                            "box: torch or ONNX), gradient_ascent (white box: torch only)")
    onnx_path: str | None = option(None, "attack this ONNX model (black box) instead of run.classifier_path")
    per_class: int = option(1, "counterfeits per target class, each from its own independently seeded run")
    targets: list[int] = option([], "target classes, e.g. 0,3,7 (default: every class)")
    class_groups: int = option(1, "split the targets into this many groups, each searched by its own run "
                                  "(at most one per target: more, smaller runs for Ray to spread; each stops "
                                  "once its classes are fooled)")
    threshold: float = option(0.99, "goal of every search and the keep rule: target confidence on the stored "
                                    "uint8 image >= this")
    seed: int = option(1, "seed of the attack; every run's seed is drawn from it")
    population_size: int = option(200, "evolution: offspring per generation, scored as one batch (paper: 200)")
    max_generations: int = option(1000, "evolution: generations per run at most")
    num_tasks: int = option(0, "Ray actors the runs are spread over, each loading the classifier once; "
                               "0 = one per run, at most one per cluster CPU (GPU with run.use_gpu)")
    cpus_per_task: float = option(1.0, "CPUs reserved per actor; its torch / onnxruntime threads")
    direct_encoding: DirectEncodingConfig = field(default_factory=DirectEncodingConfig)
    cppn: CppnConfig = field(default_factory=CppnConfig)
    gradient_ascent: GradientAscentConfig = field(default_factory=GradientAscentConfig)

    def validate(self) -> None:
        from ccc_ray.methods import EVOLUTION_ENCODINGS, SEARCH_METHODS

        methods = [*EVOLUTION_ENCODINGS, *SEARCH_METHODS]
        if self.method not in methods:
            raise CccError(f"attack.method: unknown method {self.method!r}; choose {', '.join(methods)}")
        if self.population_size < 2:
            raise CccError(f"attack.population_size: must be at least 2 (offspring per generation), "
                           f"got {self.population_size}")
        if self.max_generations < 0:
            raise CccError(f"attack.max_generations: must be >= 0, got {self.max_generations}")
        if not 0 < self.threshold <= 1:
            raise CccError(f"attack.threshold: must lie in (0, 1], got {self.threshold}")
        if self.per_class < 1:
            raise CccError(f"attack.per_class: must be at least 1, got {self.per_class}")
        if self.class_groups < 1:
            raise CccError(f"attack.class_groups: must be at least 1, got {self.class_groups}")
        if any(target < 0 for target in self.targets):
            raise CccError(f"attack.targets: target class {min(self.targets)} is out of range: classes start at 0")
        if self.num_tasks < 0:
            raise CccError(f"attack.num_tasks: must be >= 0 (0 = automatic), got {self.num_tasks}")
        if not self.cpus_per_task > 0:
            raise CccError(f"attack.cpus_per_task: must be positive, got {self.cpus_per_task}")
        if self.gradient_ascent.threshold != GradientAscentConfig().threshold:
            raise CccError("attack.gradient_ascent.threshold: set attack.threshold instead; it is the goal of "
                           "every attack method")


@dataclass
class JobConfig:
    data: DataConfig = field(default_factory=DataConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    generator: InversionConfig = field(default_factory=InversionConfig)
    generate: GenerateSettings = field(default_factory=GenerateSettings)
    harden: HardenSettings = field(default_factory=HardenSettings)
    attack: AttackSettings = field(default_factory=AttackSettings)
    tune: TuneSettings = field(default_factory=TuneSettings)
    run: RunSettings = field(default_factory=RunSettings)
