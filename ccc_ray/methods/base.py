"""The one interface every counterfeit method implements, so the CLI, jobs, store, Tune and benchmarks
treat all methods alike and adding a method is one file plus one registry line (`ccc_ray/methods/__init__.py`).

Every method is built the same way, `Method(config, context)`:
- `config` is an instance of the method's own config dataclass (`config_class`): its section of the job
  config, `--<name>.field` on the command line, paper defaults as field defaults;
- `context` (`MethodContext`) says what the method works on: image shape, number of classes, the
  classifier under attack (a callable from images to logits: a torch module for white-box methods, an
  onnxruntime session wrapper for black-box ones; never a DDP wrapper), the device and the confidence bar.

Kinds:
- "search" (`SearchMethod`): nothing to fit; `search()` optimises images against the classifier and
  `sample()` returns them (MAP-Elites with either encoding, gradient ascent);
- "generator" (`TrainedMethod`): owns modules (a generator, maybe a discriminator) fitted one
  `training_step` at a time against the frozen classifier; orchestration wraps each module for data
  parallelism, moves it to the device and checkpoints all of them;
- "joint" (`TrainedMethod` with `trains_classifier`): trains a classifier together with its generator;
  that classifier is an output of the run (`trained_classifier()`), exported and evaluated like a
  hardened one.

Contract for all methods: images are float32 N x C x H x W in [0, 1]; targets are int64 class indices in
[0, K); `sample(targets, seed, sources)` gives one image per target and the same seed gives the same images.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ClassVar

import torch
from torch import nn

from ccc_ray.config import option
from ccc_ray.errors import CccError

ClassifierFn = Callable[[torch.Tensor], torch.Tensor]

KINDS = ("generator", "search", "joint")


@dataclass(frozen=True)
class MethodContext:
    """What a method is built against: the same for every method."""

    image_shape: tuple[int, int, int]  # (C, H, W) of the data and of every image the method makes
    num_classes: int  # K: the data's classes (a hardened classifier may have one more output: reject)
    classifier: ClassifierFn | None = None  # the classifier under attack; None where only sampling is needed
    device: torch.device | str = "cpu"
    confidence_bar: float = 0.99  # searches stop once a target's confidence on the stored image reaches it
    # The run's held-out split, for searches that start from real images of another class (`RealImageSearch`):
    # float32 N x C x H x W in [0, 1] and their int64 N labels; None where no method needs them.
    real_images: torch.Tensor | None = field(default=None, compare=False)
    real_labels: torch.Tensor | None = field(default=None, compare=False)


@dataclass
class Sampled:
    """What one call of `sample_with_lineage` made: images, and what the store keeps beside them."""

    images: torch.Tensor  # N x C x H x W float32 in [0, 1]
    source_ids: list[str] | None = None  # per image: the real or substrate image it was made from
    masks: torch.Tensor | None = None  # N x H x W float32 in [0, 1]: the edited region, for methods that have one


@dataclass
class SearchResult:
    """What a search found, one image per target, with what it cost (for reports and benchmarks)."""

    images: torch.Tensor  # N x C x H x W float32 in [0, 1]
    confidences: torch.Tensor  # N float32: each image's target confidence as the search scored it
    steps_to_bar: torch.Tensor  # N int64: generations (evolution) or steps (gradient ascent) to the bar, -1 never
    evaluations_to_bar: torch.Tensor  # N int64: classifier evaluations until then, -1 never
    total_evaluations: int  # images the classifier scored in the whole search

    @property
    def fooled(self) -> torch.Tensor:
        """N bool: the images that reached the confidence bar."""
        return self.steps_to_bar >= 0


@dataclass
class TrainingSchedule:
    """The fields every trained method's config has (orchestration reads them); subclass and add your own."""

    steps: int = option(1000, "optimiser steps", ge=1)
    batch_size: int = option(256, "global batch size per step (split across Ray workers)", ge=1)
    seed: int = option(0, "seed of initialisation and of every random draw in training")


class CounterfeitMethod:
    """What every method offers. Subclasses set the class attributes and implement `sample`."""

    name: ClassVar[str]  # the registry key, the config section and the store's `method` column
    paper: ClassVar[str]  # the paper it implements, for `ccc-ray methods` and the docs
    kind: ClassVar[str]  # one of KINDS
    config_class: ClassVar[type]  # its config dataclass: the job config's section `name`
    black_box: ClassVar[bool] = False  # True: needs only logits, so an ONNX model can be attacked
    uses_sources: ClassVar[bool] = False  # True: every sample starts from a real or substrate image
    trains_classifier: ClassVar[bool] = False  # True: the run's outputs include a trained classifier
    # The config field that is the attack's budget (steps, generations, restarts): what the scorecard's
    # `budget_scale` multiplies, so a figure can be stated at 1x and 10x; None: nothing to scale.
    budget_field: ClassVar[str | None] = None

    def __init__(self, config, context: MethodContext):
        if not isinstance(config, self.config_class):
            raise CccError(f"{self.name}: expected a {self.config_class.__name__} config, got {type(config).__name__}")
        self.config = config
        self.context = context
        self.image_shape = tuple(int(size) for size in context.image_shape)
        self.num_classes = int(context.num_classes)
        self.device = torch.device(context.device)

    def sample(self, targets: torch.Tensor, seed: int, sources: torch.Tensor | None = None) -> torch.Tensor:
        """Images N x C x H x W in [0, 1], one per entry of `targets`; same seed and sources, same images."""
        raise NotImplementedError

    def source_images(self, dataset, targets: torch.Tensor, seed: int) -> tuple[torch.Tensor, list[str]] | None:
        """For `uses_sources` methods: one image to start from per target (N x C x H x W, picked with
        `seed` from `dataset`, the run's `ImageDataset`, or from the method's own substrates) and an id
        per image for the store's `source_id` (e.g. "test:123"); None for methods that start from nothing."""
        return None

    def sample_with_lineage(self, targets: torch.Tensor, seed: int, dataset=None) -> Sampled:
        """What `generate` stores: the images, with source ids and masks where the method has them.

        Methods that make an edit mask override this to fill `masks` (the default has none).
        """
        picked = self.source_images(dataset, targets, seed)
        if picked is None:
            return Sampled(self.sample(targets, seed))
        sources, source_ids = picked
        return Sampled(self.sample(targets, seed, sources), source_ids)

    def sample_from(self, sources: torch.Tensor, source_ids: list[str], targets: torch.Tensor, seed: int) -> Sampled:
        """For `uses_sources` methods: counterfeits of given images (N x C x H x W, one per target) with
        their ids, for `generate --generate.sources`. Methods that make an edit mask override this to fill
        `masks`."""
        return Sampled(self.sample(targets, seed, sources), list(source_ids))

    def check_targets(self, targets: torch.Tensor) -> torch.Tensor:
        """`targets` as 1-D int64 classes in [0, K), or a CccError saying what is wrong."""
        if not isinstance(targets, torch.Tensor) or targets.dim() != 1 or targets.is_floating_point():
            raise CccError(f"targets must be a 1-D tensor of class indices, got "
                           f"{type(targets).__name__} {tuple(getattr(targets, 'shape', ()))}")
        if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= self.num_classes):
            bad = int(targets.min()) if int(targets.min()) < 0 else int(targets.max())
            raise CccError(f"target class {bad} is out of range: classes are 0 to {self.num_classes - 1}")
        return targets.long()


class SearchMethod(CounterfeitMethod):
    """A black- or white-box search against the fixed classifier: nothing to fit."""

    kind = "search"

    def __init__(self, config, context: MethodContext):
        super().__init__(config, context)
        if context.classifier is None:
            raise CccError(f"{self.name}: a search method needs the classifier to search against")
        self.classifier_fn = context.classifier

    def search(self, targets: torch.Tensor, seed: int) -> SearchResult:
        """Optimise one image per target against the classifier until it reaches the confidence bar."""
        raise NotImplementedError

    def sample(self, targets: torch.Tensor, seed: int, sources: torch.Tensor | None = None) -> torch.Tensor:
        return self.search(targets, seed).images


class RealImageSearch(SearchMethod):
    """A search that perturbs real held-out images of another class toward each target: near-but-wrong
    counterfeits (the attacked model says the target, a person still sees the source's class).

    The sources come from `context.real_images` / `real_labels` (the run's test split): for each target,
    `seed` picks a class other than the target uniformly among the classes present, then one image of that
    class uniformly (`pick_real_sources`). `uses_sources` holds: every sample starts from a real image, and
    `sample_with_lineage(targets, seed, dataset)` stores its id ("test:<row>"), picked by the same rule.
    Subclasses implement `search_from(sources, targets, seed)`.
    """

    uses_sources = True

    def __init__(self, config, context: MethodContext):
        super().__init__(config, context)
        images, labels = context.real_images, context.real_labels
        if images is None or labels is None:
            raise CccError(f"{self.name} starts from real images of another class than the target and was given "
                           "none: build it with the run's held-out split (MethodContext.real_images and "
                           "real_labels; build_search(..., real=(test_images, test_labels)))")
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or tuple(images.shape[1:]) != self.image_shape \
                or images.dtype != torch.float32:
            raise CccError(f"{self.name}: real images must be float32 N x {' x '.join(map(str, self.image_shape))}, "
                           f"got {getattr(images, 'dtype', type(images).__name__)} "
                           f"{tuple(getattr(images, 'shape', ()))}")
        if not isinstance(labels, torch.Tensor) or labels.dim() != 1 or len(labels) != len(images) \
                or labels.is_floating_point():
            raise CccError(f"{self.name}: real labels must be int64 of shape N={len(images)}, got "
                           f"{tuple(getattr(labels, 'shape', ()))}")
        self.real_images, self.real_labels = images, labels.long()

    @staticmethod
    def stored_box(sources: torch.Tensor, epsilon: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(low, high), each N x C x H x W: the L-inf ball of radius `epsilon` around `sources`, within [0, 1],
        shrunk to the uint8 levels it holds, so that the stored image (quantized) stays inside the ball too.
        Needs `epsilon` >= 1/255 so that every pixel's interval holds a level."""
        # The 1e-4 absorbs float error in v * 255 at values that are already levels (k / 255).
        low = torch.ceil((sources - epsilon).clamp(0, 1) * 255 - 1e-4) / 255
        high = torch.floor((sources + epsilon).clamp(0, 1) * 255 + 1e-4) / 255
        return low, high

    def search_from(self, sources: torch.Tensor, targets: torch.Tensor, seed: int) -> SearchResult:
        """Perturb `sources` (N x C x H x W in [0, 1], one per target) toward `targets`."""
        raise NotImplementedError

    def search(self, targets: torch.Tensor, seed: int) -> SearchResult:
        """One counterfeit per target, from a real image of another class picked with `seed`."""
        targets = self.check_targets(targets)
        rows = pick_real_sources(self.real_labels, targets, seed, self.name)
        return self.search_from(self.real_images[rows], targets, seed)

    def sample(self, targets: torch.Tensor, seed: int, sources: torch.Tensor | None = None) -> torch.Tensor:
        if sources is None:
            return self.search(targets, seed).images
        return self.search_from(sources, self.check_targets(targets), seed).images

    def source_images(self, dataset, targets: torch.Tensor, seed: int) -> tuple[torch.Tensor, list[str]]:
        rows = pick_real_sources(dataset.test_labels, self.check_targets(targets), seed, self.name)
        return dataset.test_images[rows], [f"test:{row}" for row in rows.tolist()]


def pick_real_sources(labels: torch.Tensor, targets: torch.Tensor, seed: int, who: str = "method") -> torch.Tensor:
    """Row indices into `labels` (int64 N), one per target: a class other than the target drawn uniformly
    among the classes present, then a row of that class drawn uniformly; the same seed, the same rows."""
    labels = labels.cpu()
    generator = torch.Generator().manual_seed(int(seed))
    classes = torch.unique(labels)
    by_class = {int(c): torch.nonzero(labels == c).flatten() for c in classes}
    rows = []
    for target in targets.tolist():
        others = classes[classes != target]
        if len(others) == 0:
            raise CccError(f"{who}: the real images hold no class other than the target {target} to start from")
        members = by_class[int(others[torch.randint(len(others), (1,), generator=generator)])]
        rows.append(int(members[torch.randint(len(members), (1,), generator=generator)]))
    return torch.tensor(rows, dtype=torch.int64)


def step_generator(seed: int, rank: int, step: int, device: torch.device | str) -> torch.Generator:
    """The `rng` a `training_step` gets for (seed, rank, step): every loop that trains a method (Ray Train's,
    the in-process one) draws from this, so a 1-worker run, its resumption and the in-process loop agree."""
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + rank * 10_007 + step)


def real_data_loader(name: str, data: torch.utils.data.Dataset, batch_size: int, seed: int, rank: int = 0,
                     world: int = 1) -> tuple[torch.utils.data.DataLoader, torch.utils.data.DistributedSampler]:
    """Rank `rank`'s loader of `data` (batches of `batch_size`, its share of the global batch) and its sampler.

    Every loop that trains a method streams from this (Ray Train's, the in-process one): each epoch one
    permutation seeded by (seed, epoch), dealt across the `world` ranks, so a 1-worker run and the in-process
    loop see the same batches, and the ranks of an N-worker run see between them the 1-worker run's batch.
    """
    sampler = torch.utils.data.DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True, seed=seed,
                                                  drop_last=True)
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, sampler=sampler, drop_last=True)
    if len(loader) == 0:
        raise CccError(f"{name}: its training data has {len(data)} images, fewer than one batch of {batch_size} "
                       f"per worker; lower --{name}.batch_size")
    return loader, sampler


def real_batches(loader: torch.utils.data.DataLoader, sampler: torch.utils.data.DistributedSampler,
                 start_step: int):
    """Endless batches from `loader`, positioned at `start_step` (so a resumed run continues the same order)."""
    per_epoch = max(1, len(loader))
    epoch, skip = divmod(start_step, per_epoch)
    while True:
        sampler.set_epoch(epoch)
        for index, batch in enumerate(loader):
            if index >= skip:
                yield batch
        skip, epoch = 0, epoch + 1


class TrainedMethod(CounterfeitMethod):
    """A method with modules to fit, one optimiser step at a time, so orchestration drives the loop.

    Orchestration calls, in order: `modules()` to move and wrap them (`use_wrapped`), `training_data()`
    once for the data it should stream, then `training_step(batch, rng, batch_size)` per step, and
    `state_dict()` at checkpoints. Inside `training_step` a method reaches its modules through
    `self.trainable(name)`, which is the wrapped module during distributed training and the plain one
    otherwise; `sample` uses the plain modules (no collective calls), so rank 0 can sample alone.
    """

    kind = "generator"
    config_class: ClassVar[type] = TrainingSchedule
    budget_field = "steps"

    def __init__(self, config, context: MethodContext):
        super().__init__(config, context)
        self.step = 0
        self._wrapped: dict[str, nn.Module] = {}

    # -- what the method owns ------------------------------------------------------------------------
    def modules(self) -> dict[str, nn.Module]:
        """The modules it trains, by name (e.g. generator, discriminator, classifier): plain, never wrapped."""
        raise NotImplementedError

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Its optimisers by name, checkpointed with the modules."""
        raise NotImplementedError

    def use_wrapped(self, wrap: Callable[[nn.Module], nn.Module]) -> None:
        """Let orchestration wrap each module (DDP); the plain modules stay in `modules()` and share weights."""
        self._wrapped = {name: wrap(module) for name, module in self.modules().items()}

    def trainable(self, name: str) -> nn.Module:
        """The module to call in `training_step`: the wrapped one when orchestration wrapped it."""
        return self._wrapped[name] if name in self._wrapped else self.modules()[name]

    # -- training ------------------------------------------------------------------------------------
    def training_data(self, dataset) -> torch.utils.data.Dataset | None:
        """A data set of (image, label) pairs to stream batches from (real or substrate images), or None."""
        return None

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor] | None, rng: torch.Generator,
                      batch_size: int) -> dict[str, float]:
        """One optimiser step; `batch` comes from `training_data()` (on the device), else None.

        `batch_size` is this worker's share of the global batch; `rng` is seeded per (seed, rank, step).
        Returns the loss parts as floats, with `total` and `confidence` (mean target confidence).
        """
        raise NotImplementedError

    def trained_classifier(self) -> nn.Module | None:
        """For `trains_classifier` methods: the jointly trained classifier (K + 1 outputs: the last rejects)."""
        return None

    # -- state ----------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"modules": {name: module.state_dict() for name, module in self.modules().items()},
                "optimizers": {name: opt.state_dict() for name, opt in self.optimizers().items()},
                "step": self.step}

    def load_state_dict(self, state: dict) -> None:
        """Restore modules (and optimisers and step, when the state has them: generator files do not)."""
        modules = self.modules()
        missing = sorted(set(modules) - set(state.get("modules", {})))
        if missing:
            raise CccError(f"{self.name}: saved state lacks module(s) {', '.join(missing)}")
        for name, module in modules.items():
            module.load_state_dict(state["modules"][name])
        for name, optimizer in self.optimizers().items():
            if name in state.get("optimizers", {}):
                optimizer.load_state_dict(state["optimizers"][name])
        self.step = int(state.get("step", 0))


@dataclass
class MethodInfo:
    """One line of `ccc-ray methods`."""

    name: str
    kind: str
    paper: str
    black_box: bool
    config_section: str
    settings: list[str] = field(default_factory=list)
