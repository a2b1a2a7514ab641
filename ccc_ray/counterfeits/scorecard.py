"""The attack scorecard without Ray: every attack family that applies, each at a stated budget, against
one classifier, judged by one rule.

A family is a registered method of kind "generator" (trained here, in-process, against the model) or
"search" (run against it); joint methods train a classifier of their own and are not attacks on a given
one. A torch file is a white box: every family applies. An ONNX file is a black box: only families with
`black_box` apply. Every family attacks the *deployed decision* (`DeployedDecision`): the target class
AND acceptance by the model's OOD score at its threshold, so against a reject-class or outlier-exposure
model the attacker optimises both.

Every sample is judged on the image as stored (uint8), against the model itself:
- confident: the keep rule (`keep.py`) at the user's `keep.confidence_bar`;
- accepted: the model's OOD score >= its threshold (the ONNX metadata's, or calibrated on the test split
  to accept 95% of it for a torch file or an ONNX file without one);
- not the target, by each judge (`judge.py`): far from the data (the far rule, `far.py`: no class is
  right there), or near the data and named another class by the judge (a noisy real 9 the model calls
  "3"). Near samples the judge names the target are digits the attacker found, not failures.
A success is all three; the row's figure is the worst judge's (`success_rate`), each judge's is beside
it. Per family the card also reports the confirmed share (of the samples that fooled the deployed model,
the share the worst judge still names the target: attacker effort spent finding the data), classifier
evaluations (images the model scored, training passes included), evaluations to the first success and
seconds per success.

Budgets are stated and scaled: `budget_scales` runs every family at each multiple of its budget (the
field its method names as `budget_field`: steps, generations, restarts), so a defence is seen at 1x and at
10x; one that holds at 1x and falls at 10x has not held.

Contract: images uint8 N x C x H x W as stored; targets int64 N in [0, K).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from ccc_ray.classifiers.training import predict_logits
from ccc_ray.config import option
from ccc_ray.counterfeits.deployed_decision import DeployedDecision
from ccc_ray.counterfeits.far import FarFromData
from ccc_ray.counterfeits.judge import CONFIRMED, FAR, WRONG, Judge, judged_success
from ccc_ray.counterfeits.keep import score_as_stored
from ccc_ray.counterfeits.quality import quantize
from ccc_ray.counterfeits.search import ONNX, AttackTarget, build_search, held_out, plan_runs, search_run
from ccc_ray.data.dataset import ImageDataset
from ccc_ray.errors import CccError
from ccc_ray.methods import (METHODS, MethodContext, SearchMethod, TrainedMethod, TrainingSchedule, method_class,
                             real_batches, real_data_loader, step_generator)
from ccc_ray.methods.map_elites import EvolutionSchedule
from ccc_ray.ood.metrics import acceptance_threshold
from ccc_ray.ood.scores import OOD_SCORES, ood_score

FAMILY_KINDS = ("generator", "search")
NOISE_IMAGES = 256  # uniform-noise images whose median OOD score sets the gate's unit (see deployed_threshold)


@dataclass
class ScorecardSettings:
    model: str | None = option(None, "the classifier to score: a ccc-ray torch file (.safetensors: white box, every "
                                     "family) or an ONNX file (.onnx: black box, black-box families only); "
                                     "default: the run's classifier")
    families: list[str] = option([], "attack families to run (registered method names, e.g. inversion,cppn); "
                                     "default: every generator and search method that applies to the model")
    per_class: int = option(5, "samples per class and family (a search: one independently seeded run each)", ge=1)
    budget_scales: list[float] = option([1.0], "run every family at each of these multiples of its budget (its "
                                                "steps, generations or restarts), e.g. 1,10: the card shows success "
                                                "against budget", ge=1)
    generator_steps: int = option(300, "training steps of every trained family (its section's `steps`); "
                                       "0 = the section's own", ge=0)
    generations: int = option(100, "generations of every evolution family (its section's `max_generations`); "
                                   "0 = the section's own", ge=0)
    ood_score: str = option("auto", "OOD score the deployed model accepts by: auto (an ONNX file's metadata; "
                                    "not_reject for a reject-class model, max_softmax otherwise), or a score name")
    seed: int = option(0, "seed of the samples and of every search's runs")
    cpus_per_task: float = option(1.0, "CPUs per Ray task (one task per family); its torch / onnxruntime threads",
                                  gt=0)
    each_round: bool = option(True, "harden: also score the baseline and every round's model with the scorecard "
                                    "(written to each round's folder, summarised in report.json and report.md)")
    pool: bool = option(True, "harden with each_round: every family's confident, far samples of a round's "
                              "scorecard join the counterfeit pool of the next round (split into train / held out "
                              "by row id like the rest; held-out AUROC is reported per family)")

    def validate(self) -> None:
        if self.ood_score != "auto" and self.ood_score not in OOD_SCORES:
            raise CccError(f"scorecard.ood_score: {self.ood_score!r} is not auto or one of {', '.join(OOD_SCORES)}")


# ---- what the deployed model accepts ---------------------------------------------------------------------

@dataclass(frozen=True)
class DeployedThreshold:
    """The OOD side of the deployed decision: score, threshold, and where the threshold came from."""

    score: str
    reject_class: bool
    ood_threshold: float
    scale: float  # the gate's unit: a tenth of the way from noise's median score to the threshold
    source: str  # "ONNX metadata" or "test split"

    def accepts(self, logits: torch.Tensor) -> torch.Tensor:
        """Bool N: the model's OOD score accepts each image (score >= threshold)."""
        return ood_score(self.score, logits, self.reject_class) >= self.ood_threshold

    def objective(self, classifier_fn, confidence_bar: float) -> DeployedDecision:
        """The classifier the attack families see: confident in class k only where the score accepts."""
        return DeployedDecision(classifier_fn, self.score, self.reject_class, self.ood_threshold, confidence_bar,
                                self.scale)


def deployed_threshold(target: AttackTarget, classifier_fn, dataset: ImageDataset,
                       score_setting: str = "auto") -> DeployedThreshold:
    """The score and threshold the model is deployed with: an ONNX file's metadata where it has them for the
    score in use, else calibrated on the test split (95% of real held-out images accepted)."""
    metadata = getattr(classifier_fn, "metadata", {}) if target.kind == ONNX else {}
    score = score_setting
    if score == "auto":
        score = metadata.get("ood_score") or ("not_reject" if target.reject_class else "max_softmax")
    if score == "not_reject" and not target.reject_class:
        raise CccError(f"scorecard.ood_score: not_reject needs a model with a reject class; {target.path!r} has "
                       "none (pick max_softmax, max_logit or negative_energy)")
    scores = ood_score(score, predict_logits(classifier_fn, dataset.test_images), target.reject_class)
    if metadata.get("threshold") is not None and metadata.get("ood_score") == score:
        threshold, source = float(metadata["threshold"]), "ONNX metadata"
    else:
        threshold, source = acceptance_threshold(scores), "test split"
    noise = torch.rand(NOISE_IMAGES, *dataset.image_shape, generator=torch.Generator().manual_seed(0))
    noise_score = float(ood_score(score, predict_logits(classifier_fn, noise), target.reject_class).median())
    # The gate's unit: a tenth of the way from where a search starts (noise) to the threshold, so the gate
    # moves (and gives a gradient) over that whole way; real images' spread where noise already passes.
    scale = max((threshold - noise_score) / 10, float(scores.std()), 1e-6)
    return DeployedThreshold(score, target.reject_class, threshold, scale, source)


# ---- which families, at which budget -----------------------------------------------------------------------

def scorecard_families(requested: list[str], target: AttackTarget) -> list[str]:
    """The families to run: `requested` (checked), or every generator and search method that applies."""
    black_box = [name for name, cls in METHODS.items() if cls.kind in FAMILY_KINDS and cls.black_box]
    if not requested:
        return [name for name, cls in METHODS.items()
                if cls.kind in FAMILY_KINDS and (target.kind != ONNX or cls.black_box)]
    for name in requested:
        cls = method_class(name, "scorecard.families", kinds=FAMILY_KINDS)
        if target.kind == ONNX and not cls.black_box:
            raise CccError(f"scorecard.families: {name} needs gradients and {target.path!r} is an ONNX model, a "
                           f"black box; the black-box families are {', '.join(black_box)}")
    return list(dict.fromkeys(requested))


def family_config(config, settings: ScorecardSettings, method_cls=None, budget_scale: float = 1.0):
    """A family's section with the scorecard's budget applied: steps for trained families, generations for
    evolution, anything else its own section's budget; then that budget (the method's `budget_field`) times
    `budget_scale`."""
    if isinstance(config, TrainingSchedule) and settings.generator_steps:
        config = dataclasses.replace(config, steps=settings.generator_steps)
    if isinstance(config, EvolutionSchedule) and settings.generations:
        config = dataclasses.replace(config, max_generations=settings.generations)
    field_name = getattr(method_cls, "budget_field", None)
    if budget_scale != 1 and field_name:
        config = dataclasses.replace(config, **{field_name: round(getattr(config, field_name) * budget_scale)})
    return config


# ---- one family's attack -------------------------------------------------------------------------------------

class CountingClassifier(nn.Module):
    """The model, counting every image it scores: the cost of an attack in classifier evaluations."""

    def __init__(self, classifier_fn):
        super().__init__()
        self.classifier = classifier_fn
        self.image_shape = getattr(classifier_fn, "image_shape", None)
        self.evaluations = 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.evaluations += len(images)
        return self.classifier(images)


@dataclass
class FamilyAttack:
    """What one family produced at its budget, before judging; plain tensors so it travels through Ray."""

    family: str
    kind: str
    black_box: bool
    images: torch.Tensor  # N x C x H x W uint8, as stored
    targets: torch.Tensor  # N int64
    evaluations: int  # images the model scored during the attack (training passes included)
    seconds: float  # the attack's wall clock (training included, model loading excluded)
    budget: dict  # the family's section as it ran
    budget_scale: float = 1.0  # the multiple of the scorecard's budget it ran at
    # searches: per sample, classifier evaluations until it reached the bar (-1 never); generators: None
    evaluations_to_bar: torch.Tensor | None = None


def train_in_process(method: TrainedMethod, dataset: ImageDataset) -> None:
    """Fit a trained method for its `steps` in this process, as Ray Train's loop does on one worker."""
    config = method.config
    data = method.training_data(dataset)
    batches = None
    if data is not None:
        batches = real_batches(*real_data_loader(method.name, data, config.batch_size, config.seed), method.step)
    while method.step < config.steps:
        batch = None if batches is None else tuple(part.to(method.device) for part in next(batches))
        method.training_step(batch, step_generator(config.seed, 0, method.step, method.device), config.batch_size)


def attack_family(method_cls, config, classifier_fn, decision: DeployedThreshold, dataset: ImageDataset,
                  per_class: int, seed: int, confidence_bar: float,
                  device: torch.device | str = "cpu", budget_scale: float = 1.0) -> FamilyAttack:
    """Run one family against the deployed decision of `classifier_fn`: `per_class` samples per class
    (`config` already at `budget_scale` times the scorecard's budget: `family_config`)."""
    counter = CountingClassifier(classifier_fn)
    objective = decision.objective(counter, confidence_bar)
    k = dataset.num_classes
    start = time.perf_counter()
    if issubclass(method_cls, SearchMethod):
        width = k + int(decision.reject_class) + 1  # the objective's outputs: the model's, then "not accepted"
        method = build_search(method_cls, config, objective, width, dataset.image_shape, confidence_bar, device,
                              held_out(dataset))
        results = [search_run(method, run) for run in plan_runs(list(range(k)), per_class, 1, seed)]
        images = torch.cat([torch.from_numpy(result.images).permute(0, 3, 1, 2) for result in results])
        targets = torch.cat([torch.tensor(result.run.classes, dtype=torch.int64) for result in results])
        to_bar = torch.cat([torch.from_numpy(result.evaluations).long() for result in results])
    else:
        to_bar = None
        method = method_cls(config, MethodContext(dataset.image_shape, k, objective, device, confidence_bar))
        train_in_process(method, dataset)
        targets = torch.arange(k).repeat_interleave(per_class)
        images = quantize(method.sample_with_lineage(targets, seed, dataset).images.detach().cpu())
    return FamilyAttack(method_cls.name, method_cls.kind, bool(method_cls.black_box), images.contiguous(), targets,
                        counter.evaluations, time.perf_counter() - start, dataclasses.asdict(config), budget_scale,
                        to_bar)


# ---- judging ---------------------------------------------------------------------------------------------

@dataclass
class FamilyScore:
    """One row of the scorecard: one family at one budget."""

    family: str
    kind: str
    black_box: bool
    samples: int
    confident: int  # keep rule: confidence >= the bar on the stored image
    accepted: int  # OOD score >= threshold
    confident_and_accepted: int  # what fools the deployed model, near or far
    far: int  # far from the data (far rule)
    successes: int  # confident AND accepted AND not the target: the worst judge's count
    evaluations: int
    seconds: float
    budget: dict = field(default_factory=dict)
    mean_nearest_distance: float = float("nan")  # in the far rule's space
    budget_scale: float = 1.0
    far_successes: int = 0  # confident AND accepted AND far: what every judge counts
    judges: dict = field(default_factory=dict)  # judge -> {"wrong", "confirmed", "successes", "success_rate"}
    evaluations_to_first_success: int | None = None  # searches: the fewest evaluations a successful sample took
    verdicts: list = field(default_factory=list)  # per sample: far / wrong / confirmed by the worst judge, or ""

    @property
    def success_rate(self) -> float:
        return self.successes / max(self.samples, 1)

    @property
    def confirmed_share(self) -> float:
        """Of the samples that fooled the deployed model, the share the worst judge names the target (a real-
        looking image of that class the attacker found: not a failure of the model)."""
        return 1 - self.successes / self.confident_and_accepted if self.confident_and_accepted else 0.0

    @property
    def evaluations_per_success(self) -> float | None:
        return self.evaluations / self.successes if self.successes else None

    @property
    def seconds_per_success(self) -> float | None:
        return self.seconds / self.successes if self.successes else None

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "success_rate": self.success_rate,
                "confirmed_share": self.confirmed_share, "evaluations_per_success": self.evaluations_per_success,
                "seconds_per_success": self.seconds_per_success}


def judge_family(attack: FamilyAttack, classifier_fn, decision: DeployedThreshold, far: FarFromData,
                 confidence_bar: float, judges: list[Judge]) -> FamilyScore:
    """Judge every sample against the model itself (not the attacker's objective): confident, accepted, and
    not the target by each judge (far, or near and named another class)."""
    if not judges:
        raise CccError("scorecard: judging needs at least one judge (judge.judges)")
    scored = score_as_stored(attack.images, attack.targets, classifier_fn, confidence_bar)
    accepted = decision.accepts(scored.logits) if len(attack.targets) else scored.kept
    distances = far.nearest(scored.stored)
    is_far = distances >= far.radius
    fooled = scored.kept & accepted
    per_judge, worst, worst_wrong = {}, None, None
    for judge in judges:
        success, wrong = judged_success(fooled, is_far, judge, scored.stored, attack.targets)
        count = int(success.sum())
        per_judge[judge.name] = {"wrong": int(wrong.sum()), "confirmed": int((fooled & ~is_far & ~wrong).sum()),
                                 "successes": count, "success_rate": count / max(len(attack.targets), 1),
                                 "mechanism": judge.mechanism}
        if worst is None or count > int(worst.sum()):
            worst, worst_wrong = success, wrong
    verdicts = [FAR if f else WRONG if w else CONFIRMED if fo else ""
                for f, w, fo in zip((fooled & is_far).tolist(), worst_wrong.tolist(), fooled.tolist())]
    first = None
    if attack.evaluations_to_bar is not None and bool(worst.any()):
        reached = attack.evaluations_to_bar[worst]
        first = int(reached[reached >= 0].min()) if bool((reached >= 0).any()) else None
    return FamilyScore(attack.family, attack.kind, attack.black_box, len(attack.targets), int(scored.kept.sum()),
                       int(accepted.sum()), int(fooled.sum()), int(is_far.sum()), int(worst.sum()),
                       attack.evaluations, attack.seconds, attack.budget,
                       float(distances.mean()) if len(distances) else float("nan"), attack.budget_scale,
                       int((fooled & is_far).sum()), per_judge, first, verdicts)


@dataclass
class Scorecard:
    """The whole card: the model, the rules it was judged by, one row per family."""

    model: str
    model_kind: str  # torch (white box) or onnx (black box)
    classifier_sha256: str
    confidence_bar: float
    decision: DeployedThreshold
    far: dict  # the fitted far rule: space, percentile, radius
    judges: list  # each judge: name, mechanism, held-out accuracy
    settings: dict
    families: list[FamilyScore]
    wall_seconds: float = 0.0
    stores: dict = field(default_factory=dict)  # family (@xN) -> store file of its confident, not-of-target samples

    def to_dict(self) -> dict:
        return {"model": self.model, "model_kind": self.model_kind, "classifier_sha256": self.classifier_sha256,
                "confidence_bar": self.confidence_bar, "ood": dataclasses.asdict(self.decision), "far": self.far,
                "judges": self.judges, "settings": self.settings, "wall_seconds": self.wall_seconds,
                "stores": self.stores,
                "families": [row.to_dict() for row in self.families]}


def run_scorecard(target: AttackTarget, classifier_fn, dataset: ImageDataset, settings: ScorecardSettings,
                  method_configs: dict, far: FarFromData, confidence_bar: float, judges: list[Judge],
                  device: torch.device | str = "cpu", progress=None) -> Scorecard:
    """Every family at every budget scale in this process, one after another (the Ray driver runs them as
    parallel tasks)."""
    start = time.perf_counter()
    decision = deployed_threshold(target, classifier_fn, dataset, settings.ood_score)
    rows = []
    for family in scorecard_families(settings.families, target):
        for scale in settings.budget_scales:
            config = family_config(method_configs.get(family) or METHODS[family].config_class(), settings,
                                   METHODS[family], scale)
            attack = attack_family(METHODS[family], config, classifier_fn, decision, dataset, settings.per_class,
                                   settings.seed, confidence_bar, device, scale)
            rows.append(judge_family(attack, classifier_fn, decision, far, confidence_bar, judges))
            if progress:
                progress(summary_line(rows[-1]))
    return Scorecard(target.path, target.kind, target.sha256, confidence_bar, decision, far.describe(),
                     [judge.describe() for judge in judges], dataclasses.asdict(settings), rows,
                     time.perf_counter() - start)


def summary_line(row: FamilyScore) -> str:
    per = row.evaluations_per_success
    judged = ", ".join(f"{name} {figures['success_rate']:.0%}" for name, figures in row.judges.items())
    return (f"{row.family} at {row.budget_scale:g}x: {row.successes}/{row.samples} successes "
            f"({row.success_rate:.1%}; {judged}), confirmed share {row.confirmed_share:.1%}, "
            f"{row.evaluations:,} evaluations"
            + (f" ({per:,.0f} per success)" if per else "") + f", {row.seconds:.1f} s")
