"""The job schema: every section in one typed tree, shared by all subcommands, Ray workers and Tune trials.

One YAML shape serves every stage, so a file written by one stage or by a Tune search is accepted
unchanged by the others. Besides the fixed sections, every registered method has a section of its own,
named after it (`inversion:`, `direct_encoding:`, ... in YAML; `--inversion.steps` on the command line):
`JobConfig.methods` holds them, and a method added to the registry gets its section with no change here.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ccc_ray.classifiers.build import ClassifierConfig
from ccc_ray.config import config_from_dict, option, read_yaml, validate_config
from ccc_ray.counterfeits.far import FarRule
from ccc_ray.counterfeits.judge import JudgeSettings
from ccc_ray.counterfeits.keep import KeepRule
from ccc_ray.counterfeits.scorecard import FAMILY_KINDS, ScorecardSettings
from ccc_ray.data.sources import DataConfig
from ccc_ray.errors import CccError
from ccc_ray.methods import METHODS, method_class
from ccc_ray.ood.scores import OOD_SCORES
from ccc_ray.store.writer import check_name

POOL_WINDOW_BYTES = 256 * 2**20  # a hardening worker's default counterfeit window, in uint8 image bytes

# Defaults a data set brings with it, where the digits defaults would make a run on it far longer than the
# digits run for little gain: at 28x28 a generator step costs ~10x a digits step and the test accuracy is
# flat from epoch 25 on (docs/BENCHMARKS.md, issue 13). They sit between the defaults and the YAML file, so
# a file or a flag overrides each one; `--print-config` shows the result.
DATA_SET_DEFAULTS: dict[str, dict[str, Any]] = {
    "mnist_5k": {
        "run.run_id": "mnist_5k",          # not the digits run's folder, which the same run id would resume
        "classifier.epochs": 25,           # test accuracy 98.2-98.9% from epoch 25 on (40 epochs: 98.8%)
        "inversion.steps": 400,            # training confidence at 0.997 by step 400
        "harden.reattack_steps": 400,
        "scorecard.per_class": 2,          # the baseline's and every round's scorecard, at a 28x28 step's cost
        "scorecard.generator_steps": 150,
        "scorecard.generations": 50,
    },
}


@dataclass
class RunSettings:
    run_id: str = option("default", "name of this run: outputs go to output_dir/run_id; the same id resumes")
    output_dir: str = option("ccc-runs", "folder for classifier, generator, counterfeits and reports")
    storage_path: str | None = option(None, "Ray's storage for Train checkpoints and Tune trials, reachable by "
                                            "every node (default: output_dir/run_id/ray; NFS or s3:// on clusters)")
    classifier_path: str | None = option(None, "classifier file (default: output_dir/run_id/classifier.safetensors)")
    generator_path: str | None = option(None, "generator file (default: output_dir/run_id/generator-<method>.safetensors)")
    counterfeit_store: str | None = option(None, "Parquet counterfeit store folder or URI, e.g. s3://bucket/prefix "
                                          "(default: output_dir/run_id/counterfeits)")
    num_workers: int = option(1, "Ray Train workers (data-parallel); one is right for small data", ge=1)
    use_gpu: bool | None = option(None, "train on GPUs: true, false, or none = when the cluster has GPUs")
    cpus_per_worker: float = option(1.0, "CPUs reserved per Ray Train worker", gt=0)
    checkpoint_every: int = option(100, "trained methods: checkpoint every N steps (the classifier checkpoints "
                                        "every epoch)", ge=1)
    max_failures: int = option(0, "worker failures Ray Train recovers from (restoring the last checkpoint); "
                                  "-1 = unlimited", ge=-1)

    def validate(self) -> None:
        check_name(self.run_id, "run.run_id")

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
        if self.counterfeit_store and "://" in self.counterfeit_store:
            return self.counterfeit_store
        return Path(self.counterfeit_store).absolute() if self.counterfeit_store else self.run_dir / "counterfeits"

    @property
    def ray_storage(self) -> str:
        if self.storage_path and "://" in self.storage_path:
            return self.storage_path
        return os.fspath(Path(self.storage_path).absolute() if self.storage_path else self.run_dir / "ray")


@dataclass
class GenerateSettings:
    method: str = option("inversion", "the trained method (generator or joint) whose generator samples "
                                      "counterfeits; `ccc-ray methods` lists them")
    per_class: int = option(100, "counterfeits sampled per class", ge=1)
    seed: int = option(1, "seed of the latent draws")
    batch_size: int = option(1000, "images sampled and scored per batch (bounds memory)", ge=1)
    num_actors: int = option(0, "Ray Data actors that sample and score (each holds the generator and classifier "
                                "once); 0 = in this process below 20,000 samples, else one per CPU (GPU)", ge=0)
    cpus_per_actor: float = option(1.0, "CPUs reserved per Ray Data actor", gt=0)
    sources: list[str] = option([], "translate these real images instead of sampling per class (methods that start "
                                    "from an image, e.g. counterfactual): rows of the run's data (test:12, "
                                    "train:5) or image files of the data's exact size; needs --generate.targets; "
                                    "written to the store as run <run_id>-sources")
    targets: list[int] = option([], "with --generate.sources: one target class per source, never the source's own")

    def validate(self) -> None:
        if len(self.sources) != len(self.targets):
            raise CccError(f"generate.targets: give one target class per source ({len(self.sources)} source(s), "
                           f"{len(self.targets)} target(s))")


@dataclass
class HardenSettings:
    # auto is the default (docs/BENCHMARKS.md, issue 12): where the data guard applies it already refuses every
    # far image, and reject + guard keeps more clean accuracy than adaptive + guard (99.72% vs 99.16% on
    # digits) with the same 0% scorecard; where it does not (large images), adaptive is the strongest mode
    # (a fresh inversion attack 92% -> 6.8% after 3 rounds, reject: 92%).
    mode: Literal["auto", "reject", "oe", "adaptive"] = option(
        "auto", "reject: a (K+1)-th 'none of these' class for counterfeits; oe: outlier exposure, uniform "
                "softmax on counterfeits; adaptive: a reject class trained on outliers made against the model "
                "as it trains (in-loop inversion generator, hardest-outlier mining, PGD), far ones only; auto: "
                "reject where the data guard applies (harden.guard), adaptive where it does not")
    stores: list[str] = option([], "counterfeit stores (Parquet files or folders) to pool; default: this run's store")
    rounds: int = option(1, "attack -> harden -> re-attack rounds; each round pools the counterfeits of all before",
                         ge=1)
    epochs: int = option(10, "fine-tuning epochs per round (from the baseline classifier)", ge=1)
    learning_rate: float = option(5e-4, "Adam learning rate of the fine-tuning", gt=0)
    batch_size: int = option(128, "in-distribution images per step (summed over workers)", ge=2)
    outlier_weight: float = option(0.5, "oe: weight (lambda) of the uniform cross-entropy on counterfeits", ge=0)
    noise_images: int = option(500, "reject: noise images that seed the reject class next to the counterfeits", ge=0)
    outliers_per_step: int = option(64, "adaptive: outliers labelled reject per step, next to the clean batch "
                                        "(fewer when some are not far from the data)", ge=1)
    attacker_steps: int = option(1, "adaptive: steps of the in-loop inversion generator against the classifier "
                                     "before each classifier step (0: no generator)", ge=0)
    mine_pool: int = option(4, "adaptive: candidates drawn per outlier kept; the most accepted are kept (ATOM; "
                               "1: no mining)", ge=1)
    pgd_steps: int = option(10, "adaptive: PGD steps pushing each outlier toward acceptance as a class (0: none); "
                                "reject with adversarial_reals: PGD steps on the real images", ge=0)
    pgd_epsilon: float = option(0.3, "adaptive, and reject with adversarial_reals: L-infinity radius of the PGD "
                                     "perturbation, in pixel units", ge=0)
    # 0.5, 95, 95, 0.95 below: issue 24's defaults (docs/BENCHMARKS.md, "Issue 24"): against near-but-wrong
    # images (real digits pushed toward another class) they took white-box PGD from 32-62% (baseline) to 8%
    # and kept 77% of real test digits at the bar, where the issue-12 guard left 42% and 69%.
    adversarial_reals: float = option(0.5, "reject: share of each batch's real images also trained as reject after "
                                           "targeted PGD toward a random wrong class (pgd_steps steps within "
                                           "pgd_epsilon): the near-but-wrong images a person still calls their own "
                                           "class", ge=0, le=1)
    reject_weight: float = option(1.0, "adaptive: reject-class weight relative to one average real class", gt=0)
    eval_fraction: float = option(0.3, "share of counterfeit rows held out for evaluation (split by row id)",
                                  gt=0, lt=1)
    split_seed: int = option(0, "seed of the train/evaluation split of counterfeit rows")
    pool_rows_per_worker: int | None = option(
        None, "counterfeits a Train worker holds at once; a larger pool streams through it once per epoch "
              "(adaptive, oe: steps draw from the rows held; reject needs the whole pool); default: as many as "
              "fit in 256 MiB of uint8 images (4 million 8x8 digits, 342,000 28x28, 1,700 224x224 RGB)", ge=1)

    def pool_window(self, image_shape: tuple[int, int, int]) -> int:
        """Rows a worker holds at once: the setting, or 256 MiB of uint8 images of `image_shape`."""
        return self.pool_rows_per_worker or max(1, POOL_WINDOW_BYTES // math.prod(image_shape))
    ood_score: str = option("auto", "OOD score for the acceptance threshold and the ONNX export: auto (not_reject "
                                    "with a reject class, max_softmax for oe), max_softmax, max_logit, negative_energy, "
                                    "not_reject")
    guard: Literal["auto", "class_pixels", "pixels", "off"] = option(
        "auto", "data guard around the hardened model (ccc_ray/classifiers/guard.py): its answer fades into reject "
                "with pixel distance from the training images, so no image far from the data reaches the confidence "
                "bar; the model file and its ONNX export then CONTAIN THE TRAINING IMAGES. class_pixels: confidence "
                "in class k fades with the distance to the nearest training image OF CLASS k (an image near real "
                "9s only cannot be a confident 3); pixels: with the distance to the nearest training image of any "
                "class; auto: class_pixels where the far rule measures pixels (far.auto_pixel_limit), off above; "
                "off: none")
    guard_edge_percentile: float = option(95.0, "guard: from this percentile of the training images' own nearest-"
                                                "neighbour distances on (class_pixels: nearest of the same class), "
                                                "confidence stays <= guard_cap", gt=0, lt=100)
    guard_reject_percentile: float = option(99.9, "guard: at this percentile of those distances the answer is half "
                                                  "reject; beyond it, reject", gt=0, le=100)
    guard_margin_percentile: float = option(95.0, "class_pixels guard: confidence in class k also fades once the image "
                                                 "is not clearly nearer to class-k training images than to any other "
                                                 "class: capped from this percentile of the training images' own "
                                                 "ratio (nearest own-class / nearest other-class distance) on; "
                                                 "0 = no margin rule", ge=0, lt=100)
    guard_confident_share: float = option(0.95, "guard: sharpen the hardened model's answers (one temperature, "
                                               "fitted on the training images) until this share of training images "
                                               "is answered >= keep.confidence_bar on its own class; 0 = as trained",
                                          ge=0, lt=1)
    guard_cap: float = option(0.98, "guard: the highest confidence at the edge distance and beyond; it guarantees "
                                    "far images stay below keep.confidence_bar only when below that bar",
                              gt=0.5, lt=1)
    reattack_steps: int | None = option(None, "generator steps of each re-attack (default: the method's steps)",
                                        ge=1)
    real_ood_per_set: int = option(500, "images per real OOD set in the evaluation", ge=10)
    eval_actors: int = option(0, "Ray Data actors that score the held-out counterfeits and real OOD sets (each "
                                 "holds the classifier once); 0 = in this process below 20,000 images, else one "
                                 "per CPU (GPU)", ge=0)
    eval_cpus_per_actor: float = option(1.0, "CPUs reserved per evaluation actor", gt=0)
    seed: int = option(0, "seed of fine-tuning and noise images")

    def validate(self) -> None:
        if self.ood_score != "auto" and self.ood_score not in OOD_SCORES:
            raise CccError(f"harden.ood_score: {self.ood_score!r} is not auto or one of {', '.join(OOD_SCORES)}")
        if self.guard_edge_percentile >= self.guard_reject_percentile:
            raise CccError(f"harden.guard_edge_percentile ({self.guard_edge_percentile}) must lie below "
                           f"harden.guard_reject_percentile ({self.guard_reject_percentile})")
        if self.ood_score == "not_reject" and self.mode == "oe":
            raise CccError("harden.ood_score: not_reject needs a reject class (harden.mode reject or adaptive)")

    @property
    def score(self) -> str:
        if self.ood_score != "auto":
            return self.ood_score
        return "max_softmax" if self.mode == "oe" else "not_reject"


@dataclass
class AttackSettings:
    method: str = option("direct_encoding", "search method: direct_encoding or cppn (MAP-Elites evolution, black "
                                            "box: torch or ONNX), gradient_ascent (white box: torch only); "
                                            "its settings are the section of the same name")
    onnx_path: str | None = option(None, "attack this ONNX model (black box) instead of run.classifier_path")
    per_class: int = option(1, "counterfeits per target class, each from its own independently seeded run", ge=1)
    targets: list[int] = option([], "target classes, e.g. 0,3,7 (default: every class)")
    class_groups: int = option(1, "split the targets into this many groups, each searched by its own run "
                                  "(at most one per target: more, smaller runs for Ray to spread; each stops "
                                  "once its classes are fooled)", ge=1)
    seed: int = option(1, "seed of the attack; every run's seed is drawn from it")
    num_tasks: int = option(0, "Ray actors the runs are spread over, each loading the classifier once; "
                               "0 = one per run, at most one per cluster CPU (GPU with run.use_gpu)", ge=0)
    cpus_per_task: float = option(1.0, "CPUs reserved per actor; its torch / onnxruntime threads", gt=0)


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


@dataclass
class RobustnessSettings:
    model: str | None = option(None, "classifier file to measure (default: run.classifier_path); a K + 1 model "
                                     "(hardened or joint) is attacked as --robustness.attack says")
    epsilons: list[float] = option([0.0, 0.02, 0.05, 0.1], "L-infinity budgets, in pixel units of [0, 1]", ge=0, le=1)
    steps: int = option(10, "PGD steps per attack", ge=1)
    step_size: float | None = option(None, "PGD step size (default: 2.5 x epsilon / steps)", gt=0)
    samples: int = option(500, "test images attacked (the first of the run's test split)", ge=1)
    seed: int = option(0, "seed of PGD's random start")
    attack: Literal["class_head", "all_outputs", "wrong_class"] = option(
        "class_head", "threat model for a K + 1 model: class_head attacks and scores the K class logits; "
                      "all_outputs attacks the true class's cross-entropy over every output (a reject verdict counts "
                      "as the attack's success); wrong_class raises the wrong classes over every output (the attacker "
                      "wants a wrong class accepted). The last two add the shares rejected and wrong")


@dataclass
class JobConfig:
    data: DataConfig = field(default_factory=DataConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    keep: KeepRule = field(default_factory=KeepRule)
    generate: GenerateSettings = field(default_factory=GenerateSettings)
    attack: AttackSettings = field(default_factory=AttackSettings)
    harden: HardenSettings = field(default_factory=HardenSettings)
    tune: TuneSettings = field(default_factory=TuneSettings)
    scorecard: ScorecardSettings = field(default_factory=ScorecardSettings)
    far: FarRule = field(default_factory=FarRule)
    judge: JudgeSettings = field(default_factory=JudgeSettings)
    run: RunSettings = field(default_factory=RunSettings)
    robustness: RobustnessSettings = field(default_factory=RobustnessSettings)
    methods: dict[str, Any] = field(default_factory=dict)  # method name -> its config (one section each)

    def validate(self) -> None:
        """The methods named must exist and be of the right kind (a plug-in section known only through its
        config, on a worker whose registry lacks it, is trusted: the driver checked it)."""
        for where, name, kinds in (("generate.method", self.generate.method, ("generator", "joint")),
                                   ("attack.method", self.attack.method, ("search",))):
            if name not in METHODS and name in self.methods:
                continue
            method_class(name, where, kinds=kinds)
        for name in self.scorecard.families:
            if name not in METHODS and name in self.methods:
                continue
            method_class(name, "scorecard.families", kinds=FAMILY_KINDS)

    def method_config(self, name: str):
        """The settings of method `name`: its section, or the method's defaults if the job has none."""
        config = self.methods.get(name)
        return config if config is not None else method_class(name).config_class()

    def with_method_config(self, name: str, config) -> "JobConfig":
        return dataclasses.replace(self, methods={**self.methods, name: config})


FIXED_SECTIONS = tuple(f.name for f in dataclasses.fields(JobConfig) if f.name != "methods")


def section_classes(methods: dict[str, type] | None = None) -> dict[str, type]:
    """Every section name the job accepts, fixed and per method, with its config class.

    `methods` adds method sections that are not in this process's registry: a Ray worker rebuilding a job
    whose plug-in method was registered only on the driver (its config class travels with the job).
    """
    hints = {f.name: f.default_factory for f in dataclasses.fields(JobConfig) if f.name != "methods"}
    return {**hints, **(methods or {}), **{name: cls.config_class for name, cls in METHODS.items()}}


def _check_keys(section: str, values: Any, classes: dict[str, type]) -> None:
    """Refuse a setting that is not in `section`, naming the section(s) it does belong to."""
    if not isinstance(values, dict):
        raise CccError(f"{section}: expected a mapping of settings, got {values!r}")
    own = {f.name for f in dataclasses.fields(classes[section])}
    for key in values:
        if key in own:
            continue
        owners = [name for name, cls in classes.items() if key in {f.name for f in dataclasses.fields(cls)}]
        if owners:
            where = (f"section {owners[0]}" if len(owners) == 1
                     else f"sections {', '.join(owners[:-1])} and {owners[-1]}")
            raise CccError(f"{section}.{key}: {section} has no setting {key!r}; it belongs to {where} "
                           f"(--{owners[0]}.{key})")
        raise CccError(f"{section}: unknown setting {key!r}; known settings are {', '.join(sorted(own))}")


def job_from_tree(tree: dict[str, Any], methods: dict[str, type] | None = None) -> JobConfig:
    """A JobConfig from nested YAML-shaped values: fixed sections plus one section per method; not validated.

    `methods`: config classes of method sections beyond the registry (see `section_classes`)."""
    classes = section_classes(methods)
    unknown = sorted(set(tree) - set(classes))
    if unknown:
        raise CccError(f"config: unknown section {unknown[0]!r}; sections are {', '.join(FIXED_SECTIONS)} and one "
                       f"per method ({', '.join(METHODS)}); `ccc-ray methods` lists the methods")
    for section, values in tree.items():
        _check_keys(section, values if values is not None else {}, classes)
    fixed = {name: values or {} for name, values in tree.items() if name in FIXED_SECTIONS}
    job = config_from_dict(JobConfig, fixed)
    method_sections = {name: cls for name, cls in classes.items() if name not in FIXED_SECTIONS}
    job.methods = {name: config_from_dict(cls, tree.get(name) or {}, name) for name, cls in method_sections.items()}
    return job


def job_to_tree(job: JobConfig, sections: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The YAML shape of `job` (optionally only `sections`): fixed sections, then one per method."""
    tree = {name: dataclasses.asdict(getattr(job, name)) for name in FIXED_SECTIONS}
    tree.update({name: dataclasses.asdict(job.method_config(name)) for name in {**job.methods, **METHODS}})
    return {name: value for name, value in tree.items() if sections is None or name in sections}


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    section, _, name = dotted.partition(".")
    if not name or "." in name:
        raise CccError(f"--{dotted}: settings are named section.field, e.g. inversion.steps")
    node = tree.setdefault(section, {})
    if not isinstance(node, dict):
        raise CccError(f"--{dotted}: {section!r} is a value, not a section")
    node[name] = value


def with_data_set_defaults(tree: dict[str, Any]) -> dict[str, Any]:
    """`tree` with its data set's own defaults (`DATA_SET_DEFAULTS`) wherever `tree` leaves a setting unset."""
    data = tree.get("data") or {}
    name = data.get("name", DataConfig().name) if isinstance(data, dict) else DataConfig().name
    for dotted, value in DATA_SET_DEFAULTS.get(name, {}).items():
        section, _, key = dotted.partition(".")
        node = tree.get(section)
        if node is None:
            node = tree[section] = {}
        if isinstance(node, dict):
            node.setdefault(key, value)
    return tree


def load_job(yaml_path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> JobConfig:
    """Defaults, then the data set's own defaults, then the YAML file, then dotted overrides; validated once."""
    tree: dict[str, Any] = read_yaml(yaml_path) if yaml_path else {}
    for dotted, value in (overrides or {}).items():
        set_dotted(tree, dotted, value)
    job = job_from_tree(with_data_set_defaults(tree))
    validate_config(job)
    return job


def apply_overrides(job: JobConfig, overrides: dict[str, Any]) -> JobConfig:
    """A validated copy of `job` with dotted overrides applied, through the same checks as YAML."""
    tree = job_to_tree(job)
    for dotted, value in overrides.items():
        set_dotted(tree, dotted, value)
    result = job_from_tree(tree, {name: type(config) for name, config in job.methods.items()})
    validate_config(result)
    return result


def dump_job(job: JobConfig, sections: tuple[str, ...] | None = None) -> str:
    return yaml.safe_dump(job_to_tree(job, sections), sort_keys=False)
