"""MAP-Elites over the classes: the search that evolves fooling images, generic over the encoding.

Paper: Nguyen, Yosinski & Clune, "Deep Neural Networks are Easily Fooled" (CVPR 2015), the evolutionary
search, after Mouret & Clune's MAP-Elites. The archive holds one champion per class. Each generation,
parents are drawn uniformly from the archive, mutated by the encoding, and the whole offspring population
is scored on every class in one classifier call; an offspring replaces the champion of every class whose
confidence it beats (strictly). The authors' MNIST runs used 200 offspring per generation.

The encoding is a `DirectEncoding` (`direct_encoding.py`) or a `Cppn` (`cppn.py`): anything with
`initial`, `mutate` and `render` (see `Encoding`). The search is black-box: it needs only logits, so the
classifier may be a torch module or an `ccc_ray.export.onnx_runtime.OnnxClassifier`.

Contract: the classifier maps float32 N x C x H x W in [0, 1] to N x K logits; confidence is the softmax
of the logits. Results hold K x C x H x W champion images in [0, 1]. The same seed gives the same run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from ccc_ray.config import check_bounds, option
from ccc_ray.errors import CccError
from ccc_ray.methods.base import ClassifierFn, MethodContext, SearchMethod, SearchResult

# A population of genomes: a tensor, or an object that indexes and assigns along its first dimension like
# one (`CppnGenomes`), so `genomes[index]` selects individuals and `genomes[index] = other` replaces them.
Genomes = Any


class Encoding(Protocol):
    """How genomes are made, varied and turned into images."""

    name: str
    image_shape: tuple[int, int, int]
    device: torch.device

    def initial(self, count: int, generator: torch.Generator) -> Genomes: ...

    def mutate(self, parents: Genomes, generation: int, generator: torch.Generator) -> Genomes: ...

    def render(self, genomes: Genomes) -> torch.Tensor: ...


@dataclass
class MapElitesConfig:
    population_size: int = option(200, "offspring per generation, scored as one batch (paper: 200 for MNIST)", ge=2)
    max_generations: int = option(1000, "generations after the initial population, at most", ge=0)
    threshold: float = option(0.99, "confidence a champion must reach for its class to count as fooled", gt=0, le=1)
    stop_at_threshold: bool = option(True, "stop once every class (or every requested class) is fooled")


# ---- the classifier as a callable --------------------------------------------------------------------

def check_classifier_fn(classifier_fn: ClassifierFn, image_shape: tuple[int, int, int], num_classes: int,
                        device: torch.device | str = "cpu", differentiable: bool = False) -> None:
    """Raise a CccError unless `classifier_fn` maps images of `image_shape` to `num_classes` logits.

    With `differentiable`, the logits must also carry a gradient back to the images (white-box methods).
    """
    shape = "x".join(map(str, image_shape))
    declared = getattr(classifier_fn, "image_shape", None)  # OnnxClassifier says what it takes
    if declared is not None and tuple(declared) != tuple(image_shape):
        raise CccError(f"classifier takes images of shape {'x'.join(map(str, declared))}, "
                       f"the method makes {shape}")
    probe = torch.zeros(2, *image_shape, device=device, requires_grad=differentiable)
    try:
        with classifier_eval_mode(classifier_fn), torch.set_grad_enabled(differentiable):
            logits = classifier_fn(probe)
    except CccError:
        raise
    except Exception as error:  # noqa: BLE001 - any failure here means the shapes do not fit
        raise CccError(f"classifier does not accept images of shape {shape}: "
                       f"{str(error).splitlines()[0] if str(error) else type(error).__name__}") from None
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != 2:
        raise CccError(f"classifier must return N x K logits for N images, got "
                       f"{tuple(getattr(logits, 'shape', ()))} for 2 images")
    if logits.shape[1] != num_classes:
        raise CccError(f"classifier outputs {logits.shape[1]} classes, expected num_classes={num_classes}")
    if differentiable and not logits.requires_grad:
        raise CccError("classifier gives no gradient with respect to its input (a black-box model such as "
                       "an ONNX session?); gradient ascent needs a torch module: use direct_encoding or "
                       "cppn evolution for black-box classifiers")


@contextlib.contextmanager
def classifier_eval_mode(classifier_fn: ClassifierFn) -> Iterator[None]:
    """Put a torch module into eval mode (no dropout noise in the confidences) and restore it afterwards."""
    if not isinstance(classifier_fn, nn.Module):
        yield
        return
    was_training = classifier_fn.training
    classifier_fn.eval()
    try:
        yield
    finally:
        classifier_fn.train(was_training)


@torch.no_grad()
def class_probabilities(classifier_fn: ClassifierFn, images: torch.Tensor) -> torch.Tensor:
    """Softmax of the logits, float32 N x K on the images' device, for one batch of images."""
    return torch.softmax(classifier_fn(images).float(), dim=1).to(images.device)


# ---- the search ----------------------------------------------------------------------------------------

@dataclass
class MapElitesState:
    """A run in progress: the archive and its bookkeeping. Generation 0 is the initial population."""

    genomes: Genomes  # K champions
    confidences: torch.Tensor  # K float32: each champion's confidence in its own class
    generator: torch.Generator  # every random draw of the run comes from here
    generations_to_threshold: torch.Tensor  # K int64, -1 until reached
    evaluations_to_threshold: torch.Tensor  # K int64, -1 until reached
    generation: int = 0
    evaluations: int = 0  # images scored by the classifier so far
    history: list[torch.Tensor] = field(default_factory=list)  # archive confidences after each generation


@dataclass
class EvolutionResult:
    """The outcome of a MAP-Elites run, one entry per class."""

    images: torch.Tensor  # K x C x H x W float32 in [0, 1]: the champions rendered
    confidences: torch.Tensor  # K float32: each champion's confidence in its class
    genomes: Genomes  # the K champion genomes
    generations_to_threshold: torch.Tensor  # K int64: generation the champion first reached threshold, -1 never
    evaluations_to_threshold: torch.Tensor  # K int64: classifier evaluations by then, -1 never
    generations: int  # generations run after the initial population
    evaluations: int  # classifier evaluations in all
    history: torch.Tensor  # (generations + 1) x K: archive confidences after each generation

    @property
    def fooled(self) -> torch.Tensor:
        """K bool: the classes whose champion reached the threshold."""
        return self.generations_to_threshold >= 0


class MapElites:
    """MAP-Elites with one niche per class, for any `Encoding`."""

    def __init__(self, config: MapElitesConfig, encoding: Encoding):
        check_bounds(config, "map_elites.")
        self.config = config
        self.encoding = encoding

    def start(self, classifier_fn: ClassifierFn, num_classes: int, seed: int) -> MapElitesState:
        """Score a random initial population; each class's best individual becomes its first champion."""
        if num_classes < 1:
            raise CccError(f"map_elites: num_classes must be at least 1, got {num_classes}")
        check_classifier_fn(classifier_fn, self.encoding.image_shape, num_classes, self.encoding.device)
        generator = torch.Generator(device=self.encoding.device).manual_seed(int(seed))
        population = self.encoding.initial(self.config.population_size, generator)
        with classifier_eval_mode(classifier_fn):
            probabilities = class_probabilities(classifier_fn, self.encoding.render(population))
        confidences, best = probabilities.max(0)
        never = torch.full((num_classes,), -1, dtype=torch.int64, device=confidences.device)
        state = MapElitesState(population[best], confidences, generator, never, never.clone(),
                               evaluations=len(probabilities), history=[confidences.clone()])
        self._note_threshold(state)
        return state

    def step(self, state: MapElitesState, classifier_fn: ClassifierFn) -> None:
        """One generation: mutate uniformly drawn champions, score all offspring at once, replace the beaten."""
        generator, count = state.generator, self.config.population_size
        num_classes = len(state.confidences)
        parents = state.genomes[torch.randint(num_classes, (count,), generator=generator,
                                              device=self.encoding.device)]
        offspring = self.encoding.mutate(parents, state.generation + 1, generator)
        with classifier_eval_mode(classifier_fn):
            probabilities = class_probabilities(classifier_fn, self.encoding.render(offspring))
        best_confidence, best = probabilities.max(0)  # per class: the best offspring
        beaten = torch.nonzero(best_confidence > state.confidences).squeeze(1)
        if len(beaten):
            state.genomes[beaten] = offspring[best[beaten]]
            state.confidences[beaten] = best_confidence[beaten]
        state.generation += 1
        state.evaluations += count
        state.history.append(state.confidences.clone())
        self._note_threshold(state)

    def _note_threshold(self, state: MapElitesState) -> None:
        first = (state.confidences >= self.config.threshold) & (state.generations_to_threshold < 0)
        state.generations_to_threshold[first] = state.generation
        state.evaluations_to_threshold[first] = state.evaluations

    def done(self, state: MapElitesState, stop_classes: torch.Tensor | None = None) -> bool:
        """Out of generations, or (with `stop_at_threshold`) every class in `stop_classes` (default all) fooled."""
        if state.generation >= self.config.max_generations:
            return True
        if not self.config.stop_at_threshold:
            return False
        reached = state.generations_to_threshold >= 0
        return bool(reached.all() if stop_classes is None else reached[stop_classes].all())

    def result(self, state: MapElitesState) -> EvolutionResult:
        return EvolutionResult(self.encoding.render(state.genomes), state.confidences.clone(), state.genomes,
                               state.generations_to_threshold.clone(), state.evaluations_to_threshold.clone(),
                               state.generation, state.evaluations, torch.stack(state.history))

    def run(self, classifier_fn: ClassifierFn, num_classes: int, seed: int,
            stop_classes: torch.Tensor | None = None) -> EvolutionResult:
        """Evolve until every class (or every class in `stop_classes`) is fooled, or `max_generations`."""
        if stop_classes is not None:
            stop_classes = check_targets(stop_classes, num_classes).unique().to(self.encoding.device)
        state = self.start(classifier_fn, num_classes, seed)
        while not self.done(state, stop_classes):
            self.step(state, classifier_fn)
        return self.result(state)


def check_targets(targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """`targets` as a 1-D int64 tensor of classes in [0, num_classes), or a CccError saying what is wrong."""
    if not isinstance(targets, torch.Tensor) or targets.dim() != 1 or targets.is_floating_point():
        raise CccError(f"targets must be a 1-D tensor of class indices, got "
                       f"{type(targets).__name__} {tuple(getattr(targets, 'shape', ()))}")
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= num_classes):
        bad = int(targets.min()) if int(targets.min()) < 0 else int(targets.max())
        raise CccError(f"target class {bad} is out of range: classes are 0 to {num_classes - 1}")
    return targets.long()


@dataclass
class EvolutionSchedule:
    """The search budget every evolution method's config has (its encoding adds its own fields)."""

    population_size: int = option(200, "offspring per generation, scored as one batch (paper: 200 for MNIST)", ge=2)
    max_generations: int = option(1000, "generations per run at most", ge=0)


class EvolutionMethod(SearchMethod):
    """MAP-Elites with one encoding against a fixed classifier, behind the method interface.

    Subclasses (one per encoding file) set `name`, `config_class` and `encoding_class`. Black box: only
    logits are needed, so the classifier may be an ONNX session.
    """

    paper = "Nguyen, Yosinski & Clune, Deep Neural Networks are Easily Fooled (CVPR 2015): MAP-Elites evolution"
    black_box = True
    budget_field = "max_generations"
    encoding_class: ClassVar[type]

    def __init__(self, config, context: MethodContext):
        super().__init__(config, context)
        self.encoding = self.encoding_class(config, self.image_shape, self.device)
        self.evolution = MapElites(MapElitesConfig(population_size=config.population_size,
                                                   max_generations=config.max_generations,
                                                   threshold=context.confidence_bar), self.encoding)

    def run(self, seed: int, stop_classes: torch.Tensor | None = None) -> EvolutionResult:
        """One MAP-Elites run over every class (stopping once `stop_classes` are fooled)."""
        return self.evolution.run(self.classifier_fn, self.num_classes, seed, stop_classes)

    def search(self, targets: torch.Tensor, seed: int) -> SearchResult:
        """One champion per entry of `targets`.

        A class asked for r times takes its champions from r independent runs (one champion per class per
        run), whose seeds are drawn from `seed`; each run stops once the classes it serves are fooled. A
        champion that missed the bar within `max_generations` is returned all the same: callers re-score
        what they keep (the keep rule).
        """
        targets = self.check_targets(targets).to(self.device)
        count = len(targets)
        images = torch.zeros(count, *self.image_shape, device=self.device)
        confidences = torch.zeros(count, device=self.device)
        steps = torch.full((count,), -1, dtype=torch.int64, device=self.device)
        evaluations = steps.clone()
        total = 0
        if not count:
            return SearchResult(images, confidences, steps, evaluations, 0)
        # Entry j is served by run occurrence[j]: how many earlier entries ask for the same class.
        order = torch.argsort(targets, stable=True)
        counts = torch.bincount(targets, minlength=self.num_classes)
        starts = torch.cumsum(counts, 0) - counts
        occurrence = torch.empty_like(targets)
        occurrence[order] = torch.arange(count, device=targets.device) - starts[targets[order]]
        seeds = torch.randint(2 ** 62, (int(occurrence.max()) + 1,), generator=torch.Generator().manual_seed(seed))
        for run_index, run_seed in enumerate(seeds.tolist()):
            served = occurrence == run_index
            classes = targets[served]
            result = self.run(run_seed, classes)
            images[served] = result.images[classes].to(images.device)
            confidences[served] = result.confidences[classes].to(images.device)
            steps[served] = result.generations_to_threshold[classes].to(images.device)
            evaluations[served] = result.evaluations_to_threshold[classes].to(images.device)
            total += result.evaluations
        return SearchResult(images, confidences, steps, evaluations, total)
