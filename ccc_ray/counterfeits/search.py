"""Search counterfeits against a fixed classifier with the search methods: the parts of `ccc-ray attack`
that need no Ray.

Any registered method of kind "search" serves (MAP-Elites with a direct or CPPN encoding: black box, so
the classifier may be a torch module or an ONNX model; gradient ascent: white box, torch only; PGD and
Square Attack from real held-out images of another class, white and black box). An attack
is split into independent *runs* (`AttackRun`): one `method.search` call with its own seed, serving a
group of target classes and giving one counterfeit per class. Runs are what Ray spreads over its actors
(`ccc_ray.orchestration.search_actors`); each is reproducible on its own, so the counterfeits do not
depend on how many actors ran them.

Every search scores the image as the store keeps it (uint8; see `StoredImageClassifier`), and the rows
written are judged by the keep rule (`keep.py`), so a champion that reaches the bar still has it when
read back.

Contract: images are float32 N x C x H x W in [0, 1] in the searches and uint8 N x H x W x C once stored;
a classifier maps images to N x K logits, or N x (K + 1) for a hardened model with a reject class (the
confidence of class k is then the softmax over all K + 1 outputs).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ccc_ray.classifiers.inference import prepare_for_attack
from ccc_ray.classifiers.weights import classifier_from_bytes, load_classifier
from ccc_ray.counterfeits.far import FarFromData
from ccc_ray.counterfeits.keep import score_as_stored
from ccc_ray.counterfeits.quality import dequantize, nearest_distances, quantize
from ccc_ray.data.dataset import ImageDataset
from ccc_ray.errors import CccError
from ccc_ray.export.onnx_runtime import OnnxClassifier
from ccc_ray.methods import METHODS, ClassifierFn, MethodContext, SearchMethod
from ccc_ray.store.files import atomic_write_bytes
from ccc_ray.store.writer import CounterfeitWriter, counterfeit_batch

TORCH, ONNX = "torch", "onnx"


# ---- the classifier under attack ------------------------------------------------------------------------

@dataclass(frozen=True)
class AttackTarget:
    """The classifier file under attack, as the driver checked it; `raw` is what Ray workers receive."""

    kind: str  # TORCH (a ccc-ray .safetensors file) or ONNX
    path: str
    raw: bytes
    sha256: str  # torch: the weights' fingerprint; ONNX: the fingerprint in its metadata, else sha256 of the file
    num_outputs: int  # K, or K + 1 with a reject class
    reject_class: bool


def load_target(classifier_path: str | Path | None, onnx_path: str | None, dataset: ImageDataset,
                method: str | None, where: str = "attack.onnx_path") -> tuple[AttackTarget, ClassifierFn]:
    """The classifier to attack and a callable for it, checked against the data; CccError on a mismatch.

    `method` (when given) must be able to attack an ONNX model; `where` names the setting in messages.
    """
    shape = "x".join(map(str, dataset.image_shape))
    if onnx_path is None:
        model, info = load_classifier(classifier_path, dataset.image_shape, dataset.num_classes)
        target = AttackTarget(TORCH, str(classifier_path), Path(classifier_path).read_bytes(), info.sha256,
                              info.num_outputs, info.reject_class)
        return target, prepare_for_attack(model)
    if method is not None and not METHODS[method].black_box:
        black_box = [name for name, cls in METHODS.items() if cls.kind == "search" and cls.black_box]
        raise CccError(f"{where}: {method} needs gradients and an ONNX model is a black box; "
                       f"attack it with {' or '.join(black_box)}")
    if not Path(onnx_path).is_file():
        raise CccError(f"{where}: ONNX model {onnx_path!r} does not exist")
    model = OnnxClassifier(onnx_path, spin_wait=False)
    if tuple(model.image_shape) != tuple(dataset.image_shape):
        raise CccError(f"{where}: {onnx_path!r} takes images "
                       f"{'x'.join(map(str, model.image_shape))}, but the data ({dataset.name}) has {shape}; "
                       "pass the data set the model was trained on (--data.name, --data.image_size)")
    reject = bool(model.metadata.get("reject_class", False))
    expected = dataset.num_classes + int(reject)
    if model.num_classes != expected:
        raise CccError(f"{where}: {onnx_path!r} has {model.num_classes} outputs, but the data "
                       f"({dataset.name}) has {dataset.num_classes} classes"
                       f"{' plus the reject class its metadata names' if reject else ''}")
    raw = Path(onnx_path).read_bytes()
    sha256 = model.metadata.get("classifier_sha256") or hashlib.sha256(raw).hexdigest()
    return AttackTarget(ONNX, str(onnx_path), raw, sha256, model.num_classes, reject), model


def classifier_from_target(target: AttackTarget, device: torch.device | str = "cpu",
                           threads: int = 0) -> ClassifierFn:
    """Rebuild the classifier from `target.raw` (in a Ray worker): a torch module in eval mode, or an ONNX session."""
    if target.kind == TORCH:
        model, _ = classifier_from_bytes(target.raw, target.path)
        return prepare_for_attack(model, device)
    with tempfile.TemporaryDirectory(prefix="ccc-attack-") as folder:  # onnxruntime reads it here, once
        file = Path(folder) / Path(target.path).name
        file.write_bytes(target.raw)
        return OnnxClassifier(file, num_threads=threads, spin_wait=False)  # torch work runs between its calls


class StoredImageClassifier:
    """A classifier that sees each image as the store keeps it: quantized to uint8 and back to [0, 1].

    The forward pass scores the quantized image; the gradient passes straight through the rounding (the
    straight-through estimator), so gradient ascent works unchanged. The searches thereby optimise, and
    stop on, the confidence the stored row will have.
    """

    def __init__(self, classifier_fn: ClassifierFn):
        self.classifier_fn = classifier_fn
        self.image_shape = getattr(classifier_fn, "image_shape", None)  # an ONNX model says what it takes

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        stored = dequantize(quantize(images))
        if images.requires_grad:
            stored = images + (stored - images).detach()
        return self.classifier_fn(stored)


def check_targets_in_range(targets: list[int], num_classes: int) -> list[int]:
    """The classes to attack (all when `targets` is empty), sorted, or a CccError for one out of range."""
    for target in targets:
        if not 0 <= target < num_classes:
            raise CccError(f"attack.targets: target class {target} is out of range: the classifier's classes "
                           f"are 0 to {num_classes - 1}")
    return sorted(set(targets)) if targets else list(range(num_classes))


# ---- runs -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AttackRun:
    """One independent search: a seed and the classes it serves, one counterfeit each."""

    index: int
    repetition: int  # which of the per_class counterfeits of its classes this run gives
    classes: tuple[int, ...]
    seed: int


def plan_runs(targets: list[int], per_class: int, class_groups: int, seed: int) -> list[AttackRun]:
    """per_class x groups runs; the targets split into `class_groups` groups (fewer if there are fewer targets)."""
    groups = [tuple(int(c) for c in group)
              for group in torch.tensor_split(torch.tensor(targets), min(class_groups, len(targets)))]
    count = per_class * len(groups)
    seeds = torch.randint(2 ** 62, (count,), generator=torch.Generator().manual_seed(seed)).tolist()
    return [AttackRun(index, index // len(groups), groups[index % len(groups)], seeds[index])
            for index in range(count)]


@dataclass
class RunResult:
    """What one run found, per class of the run; numpy so it travels cheaply through Ray's object store."""

    run: AttackRun
    images: np.ndarray  # n x H x W x C uint8, as stored
    confidences: np.ndarray  # n float32: confidence of the stored image in its class, as the worker scored it
    generations: np.ndarray  # n int64: generations (evolution) or steps (gradient ascent) to the threshold, -1 never
    evaluations: np.ndarray  # n int64: classifier evaluations until then (gradient ascent: forward passes of the image)
    total_evaluations: int  # images the classifier scored in the whole run
    seconds: float


def build_search(method_class: type[SearchMethod], config, classifier_fn: ClassifierFn, num_outputs: int,
                 image_shape: tuple[int, int, int], confidence_bar: float, device: torch.device | str = "cpu",
                 real: tuple[torch.Tensor, torch.Tensor] | None = None) -> SearchMethod:
    """The search method against the classifier as the store sees it (uint8), over all `num_outputs` niches.

    `real`: the run's held-out split (images float32 N x C x H x W in [0, 1], labels int64 N), for the
    searches that start from real images of another class (`RealImageSearch`); the others ignore it.
    """
    images, labels = real if real is not None else (None, None)
    context = MethodContext(image_shape, num_outputs, StoredImageClassifier(classifier_fn), device, confidence_bar,
                            images, labels)
    return method_class(config, context)


def held_out(dataset: ImageDataset) -> tuple[torch.Tensor, torch.Tensor]:
    """The split searches from real images start from: the test split, never the training images."""
    return dataset.test_images, dataset.test_labels


def search_run(method: SearchMethod, run: AttackRun) -> RunResult:
    """One run of `method`: one counterfeit per class of the run, judged on the stored images."""
    start = time.perf_counter()
    classes = torch.tensor(run.classes, dtype=torch.int64, device=method.device)
    result = method.search(classes, run.seed)
    return RunResult(run, quantize(result.images.detach().cpu()).permute(0, 2, 3, 1).contiguous().numpy(),
                     result.confidences.detach().cpu().numpy().astype(np.float32), result.steps_to_bar.cpu().numpy(),
                     result.evaluations_to_bar.cpu().numpy(), int(result.total_evaluations),
                     time.perf_counter() - start)


# ---- the store --------------------------------------------------------------------------------------------

@dataclass
class AttackReport:
    """What an attack produced: kept counterfeits and what the searches needed, per class."""

    method: str
    store_file: str
    runs: int
    kept: int
    kept_per_class: dict[int, int]
    generations_to_threshold: dict[int, list[int]]  # per class, per run serving it: -1 = not reached
    evaluations_to_threshold: dict[int, list[int]]
    total_evaluations: int
    search_seconds: float  # summed over runs (worker time)
    wall_seconds: float  # driver wall clock from starting the actors to the last result (Ray start-up excluded)
    mean_nearest_train_l2: float
    test_mean_nearest_train_l2: float
    near_dropped: int = 0  # confident champions not stored because the far rule called them near the data

    @property
    def counterfeits_per_second(self) -> float:
        return self.kept / max(self.wall_seconds, 1e-9)

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "counterfeits_per_second": self.counterfeits_per_second,
                "distance_ratio": self.mean_nearest_train_l2 / max(self.test_mean_nearest_train_l2, 1e-12)}


def write_counterfeits(results: list[RunResult], classifier_fn: ClassifierFn, target: AttackTarget,
                       dataset: ImageDataset, *, method: str, confidence_bar: float, store_dir: Path | str,
                       run_id: str, run_metadata: dict, wall_seconds: float,
                       far: FarFromData | None = None) -> AttackReport:
    """Judge every run's stored images by the keep rule against `classifier_fn`, write the kept to one store file.

    With `far` (the fitted far rule), kept images near the data are not stored (counted in `near_dropped`).

    Row ids follow (run id, method, run seed, repetition x K + class), so re-running the same attack
    replaces its file with the same rows.
    """
    k = dataset.num_classes
    kept_per_class = dict.fromkeys(range(k), 0)
    generations: dict[int, list[int]] = {}
    evaluations: dict[int, list[int]] = {}
    distances = []
    near_dropped = 0
    results = sorted(results, key=lambda result: result.run.index)
    for result in results:
        for c, g, e in zip(result.run.classes, result.generations.tolist(), result.evaluations.tolist()):
            generations.setdefault(c, []).append(int(g))
            evaluations.setdefault(c, []).append(int(e))
    with CounterfeitWriter(store_dir, method, run_id, run_metadata, dataset.class_names) as writer:
        for result in results:
            stored = torch.from_numpy(result.images.copy()).permute(0, 3, 1, 2)  # Ray hands back read-only arrays
            targets = torch.tensor(result.run.classes, dtype=torch.int64)
            scored = score_as_stored(stored, targets, classifier_fn, confidence_bar, "cpu")
            keep, confidence = scored.kept, scored.confidence
            if far is not None:
                too_near = keep & ~far.is_far(stored)
                near_dropped += int(too_near.sum())
                keep = keep & ~too_near
            near = nearest_distances(dequantize(stored[keep]), dataset.train_images)
            distances.append(near)
            for c in targets[keep].tolist():
                kept_per_class[c] += 1
            writer.write(counterfeit_batch(
                result.images[keep.numpy()], targets[keep].numpy(), scored.predicted[keep].numpy(),
                confidence[keep].numpy(), near.numpy(), (result.run.repetition * k + targets[keep]).numpy(),
                run_id=run_id, method=method, classifier_sha256=target.sha256, seed=result.run.seed))
        if not writer.rows:  # raising inside the writer's block aborts it: no empty store file
            budget = METHODS[method].budget_field if method in METHODS else None
            raise CccError(f"attack: none of {len(results)} {method} run(s) reached confidence {confidence_bar} on "
                           f"any class{f' far from the data ({near_dropped} confident ones were near)' if far else ''}"
                           f"; give the search more budget{f' (--{method}.{budget})' if budget else ''} or lower "
                           "--keep.confidence_bar")
    near = torch.cat(distances)
    return AttackReport(
        method=method, store_file=str(writer.path), runs=len(results), kept=writer.rows,
        kept_per_class=kept_per_class, generations_to_threshold=generations, evaluations_to_threshold=evaluations,
        total_evaluations=sum(result.total_evaluations for result in results),
        search_seconds=sum(result.seconds for result in results), wall_seconds=wall_seconds,
        mean_nearest_train_l2=float(near.mean()), near_dropped=near_dropped,
        test_mean_nearest_train_l2=float(nearest_distances(dataset.test_images, dataset.train_images).mean()))


def write_report(report: AttackReport, path: Path) -> None:
    atomic_write_bytes(path, json.dumps(report.to_dict(), indent=2).encode())


def summary_line(report: AttackReport) -> str:
    fooled = {c: sum(g >= 0 for g in gens) for c, gens in report.generations_to_threshold.items()}
    return (f"{report.method}: kept {report.kept} counterfeits from {report.runs} run(s) "
            f"({sum(fooled.values())} class searches reached the confidence bar), {report.total_evaluations} "
            f"classifier evaluations, {report.wall_seconds:.1f} s, {report.counterfeits_per_second:.2f} "
            f"counterfeits/s; store {report.store_file}")
