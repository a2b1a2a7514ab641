"""Seed 003 figures: how well the substrate cGAN paints digits onto substrates, on this CPU, at 8 x 8.

Trains the attacked classifier (SmallCNN, as tests/conftest.py) and an independent judge (an MLP, built
differently) on the digits, fits `substrate_gan` with a loop shaped like orchestration's (a DataLoader over
`training_data`, `training_step` per batch, rng seeded per step), then measures on fresh substrates:
- one active class: share of outputs the classifier puts in the target class at >= 0.99 (on the float
  outputs and on their uint8 rounding, which the store keeps), mean confidence, and mean L1 distance to the
  substrate (pixels in [0, 1]);
- two and three active classes: share whose top-k (k = active classes) holds every active class;
- no active class: share the classifier still puts in some class at >= 0.5;
- the judge: share of one-class outputs it assigns to the target class;
- the same figures for the raw substrates, as the floor.
With --eval-every N, the one-class figures on 200 fresh outputs every N steps (the curve against steps;
training seconds exclude these evaluations). Writes one JSON line per run to --results and, with --grid, a
PNG of substrate/output pairs.

Run: PYTHONPATH=. python benchmarks/substrate_gan_seed003.py --label paper --steps 3000
     (any SubstrateGanConfig field as --field value, e.g. --substrate_weight 50)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ccc_ray.classifiers.small_cnn import SmallCNN
from ccc_ray.classifiers.training import accuracy, train_epoch
from ccc_ray.config import config_from_dict, validate_config
from ccc_ray.data.sources import DataConfig, load_dataset
from ccc_ray.methods import MethodContext
from ccc_ray.methods.substrate_gan import SubstrateGan, SubstrateGanConfig

EVAL_SEED = 2026


def train(build, dataset, epochs: int, seed: int) -> nn.Module:
    """`build()`'s model trained on the digits; seeded before building, so its initialisation repeats too."""
    torch.manual_seed(seed)
    model = build()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(dataset.train_images, dataset.train_labels),
                                         batch_size=64, shuffle=True, generator=generator)
    for _ in range(epochs):
        train_epoch(model, loader, optimizer, torch.device("cpu"), 1, generator)
    return model.eval().requires_grad_(False)


def judge_mlp(image_shape, num_classes: int) -> nn.Module:
    """The independent judge: no convolutions, different width and activation from the attacked SmallCNN."""
    size = int(np.prod(image_shape))
    return nn.Sequential(nn.Flatten(), nn.Linear(size, 512), nn.ReLU(), nn.Dropout(0.2), nn.Linear(512, 256),
                         nn.ReLU(), nn.Linear(256, num_classes))


def quantised(images: torch.Tensor) -> torch.Tensor:
    """As the store keeps them: uint8 and back."""
    return (images * 255).round() / 255


@torch.no_grad()
def one_class_figures(method: SubstrateGan, classifier: nn.Module, per_class: int) -> dict:
    """The headline figure alone (float and uint8 outputs), cheap enough to take during training."""
    targets = torch.arange(method.num_classes).repeat(per_class)
    sources, _ = method.source_images(None, targets, EVAL_SEED)
    images = method.sample(targets, EVAL_SEED, sources)
    rows = torch.arange(len(targets))
    confidence = torch.softmax(classifier(images), 1)[rows, targets]
    stored = torch.softmax(classifier(quantised(images)), 1)[rows, targets]
    return {"one_class_at_0.99": float((confidence >= 0.99).float().mean()),
            "one_class_at_0.99_uint8": float((stored >= 0.99).float().mean()),
            "one_class_mean_confidence": float(confidence.mean()),
            "l1_to_substrate": float((images - method.at_data_size(sources)).abs().mean())}


def fit(method: SubstrateGan, steps: int, log_every: int, classifier: nn.Module | None = None,
        eval_every: int = 0, eval_per_class: int = 20) -> tuple[list[dict], list[dict]]:
    """Train to `steps`; every `eval_every` steps (and at the end) the one-class figures on 10 x
    `eval_per_class` fresh outputs: the curve of the share at 0.99 against steps (evaluation time excluded)."""
    data = method.training_data(None)
    loader = torch.utils.data.DataLoader(data, batch_size=method.config.batch_size, shuffle=True, drop_last=True,
                                         generator=torch.Generator().manual_seed(method.config.seed))
    history, curve, train_seconds = [], [], 0.0
    while method.step < steps:
        for batch in loader:
            started = time.time()
            rng = torch.Generator().manual_seed(method.config.seed * 1_000_003 + method.step)
            parts = method.training_step(batch, rng, len(batch[0]))
            train_seconds += time.time() - started
            if method.step % log_every == 0 or method.step == steps:
                parts["step"], parts["seconds"] = method.step, round(train_seconds, 1)
                history.append(parts)
                print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in parts.items()}), flush=True)
            if classifier is not None and eval_every and (method.step % eval_every == 0 or method.step == steps):
                point = {"step": method.step, "seconds": round(train_seconds, 1),
                         **one_class_figures(method, classifier, eval_per_class)}
                curve.append(point)
                print(json.dumps({"curve": point}), flush=True)
            if method.step >= steps:
                break
    return history, curve


@torch.no_grad()
def evaluate(method: SubstrateGan, classifier: nn.Module, judge: nn.Module, per_class: int) -> dict:
    k = method.num_classes
    targets = torch.arange(k).repeat(per_class)
    sources, _ = method.source_images(None, targets, EVAL_SEED)
    images = method.sample(targets, EVAL_SEED, sources)
    substrates = method.at_data_size(sources)
    probs = torch.softmax(classifier(images), dim=1)
    confidence = probs[torch.arange(len(targets)), targets]
    raw = torch.softmax(classifier(substrates), dim=1)[torch.arange(len(targets)), targets]
    stored = torch.softmax(classifier(quantised(images)), dim=1)[torch.arange(len(targets)), targets]
    result = {
        "one_class_at_0.99": float((confidence >= 0.99).float().mean()),
        "one_class_at_0.99_uint8": float((stored >= 0.99).float().mean()),
        "one_class_mean_confidence": float(confidence.mean()),
        "one_class_argmax": float((probs.argmax(1) == targets).float().mean()),
        "l1_to_substrate": float((images - substrates).abs().mean()),
        "judge_agrees": float((judge(images).argmax(1) == targets).float().mean()),
        "substrate_at_0.99": float((raw >= 0.99).float().mean()),
        "judge_on_substrates": float((judge(substrates).argmax(1) == targets).float().mean()),
    }
    generator = torch.Generator().manual_seed(EVAL_SEED)
    count = k * per_class
    for active_count in (2, 3):
        if active_count > method.config.max_active_classes:
            continue
        ranks = torch.rand(count, k, generator=generator).argsort(1).argsort(1)
        active = ranks < active_count
        images_many = method.sample_active(active, EVAL_SEED + active_count)
        top = torch.softmax(classifier(images_many), 1).topk(active_count, dim=1).indices
        hits = torch.zeros_like(active).scatter_(1, top, True)
        result[f"{active_count}_classes_all_in_top_k"] = float((hits == active).all(1).float().mean())
    images_none = method.sample_active(torch.zeros(count, k, dtype=torch.bool), EVAL_SEED + 9)
    none_probs = torch.softmax(classifier(images_none), 1)
    result["no_class_max_at_0.5"] = float((none_probs.max(1).values >= 0.5).float().mean())
    result["no_class_l1_to_substrate"] = float(
        (images_none - method.at_data_size(method.source_images(None, torch.zeros(count), EVAL_SEED + 9)[0]))
        .abs().mean())
    return result


def save_grid(method: SubstrateGan, path: Path, scale: int = 8) -> None:
    """Rows of substrate/output pairs: two rows of ten, class i in column i."""
    from PIL import Image

    targets = torch.arange(method.num_classes).repeat(2)
    sources, _ = method.source_images(None, targets, EVAL_SEED + 100)
    outputs = method.sample(targets, EVAL_SEED + 100, sources)
    substrates = method.at_data_size(sources)
    rows = []
    for row in range(2):
        pick = slice(row * method.num_classes, (row + 1) * method.num_classes)
        rows += [torch.cat(list(substrates[pick]), dim=2), torch.cat(list(outputs[pick]), dim=2)]
    grid = torch.cat(rows, dim=1)  # C x (4 H) x (10 W)
    array = (grid.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    array = array[:, :, 0] if array.shape[2] == 1 else array
    image = Image.fromarray(array).resize((array.shape[1] * scale, array.shape[0] * scale), Image.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", required=True)
    parser.add_argument("--results", default="benchmarks/results/substrate_gan_seed003.jsonl")
    parser.add_argument("--grid", default=None, help="PNG path for the substrate/output grid")
    parser.add_argument("--per-class", type=int, default=50, help="evaluation images per class")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--log-every", type=int, default=250)
    parser.add_argument("--eval-every", type=int, default=0, help="steps between curve points (0: none)")
    known, rest = parser.parse_known_args()
    overrides = {rest[i].lstrip("-"): rest[i + 1] for i in range(0, len(rest), 2)}
    config = config_from_dict(SubstrateGanConfig, overrides, "substrate_gan")
    validate_config(config)
    torch.set_num_threads(known.threads)

    digits = load_dataset(DataConfig())
    classifier = train(lambda: SmallCNN(digits.image_shape, digits.num_classes), digits, 10, seed=1)
    judge = train(lambda: judge_mlp(digits.image_shape, digits.num_classes), digits, 30, seed=2)
    accuracies = {"classifier_test_accuracy": accuracy(classifier, digits.test_images, digits.test_labels),
                  "judge_test_accuracy": accuracy(judge, digits.test_images, digits.test_labels)}
    print(json.dumps(accuracies), flush=True)

    method = SubstrateGan(config, MethodContext(digits.image_shape, digits.num_classes, classifier))
    started = time.time()
    history, curve = fit(method, config.steps, known.log_every, classifier, known.eval_every)
    seconds = time.time() - started
    result = {"label": known.label, "overrides": overrides, "train_seconds": round(history[-1]["seconds"], 1),
              "wall_seconds": round(seconds, 1), "steps": config.steps, **accuracies,
              **evaluate(method, classifier, judge, known.per_class), "curve": curve,
              "last_losses": history[-1] if history else {}, "config": dataclasses.asdict(config)}
    print(json.dumps({k: v for k, v in result.items() if k not in ("config", "last_losses", "curve")}), flush=True)
    Path(known.results).parent.mkdir(parents=True, exist_ok=True)
    with open(known.results, "a") as out:
        out.write(json.dumps(result) + "\n")
    if known.grid:
        save_grid(method, Path(known.grid))


if __name__ == "__main__":
    main()
