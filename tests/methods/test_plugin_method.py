"""A method that lives outside the package: defined here in a few lines, registered with one call, and run
through train-generator (Ray Train, 2 workers), generate, Tune (one trial, 2 workers) and harden with
no other code change. This is the method interface's promise: one file plus one registry line."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ccc_ray import cli
from ccc_ray.config import option
from ccc_ray.methods import METHODS, TrainedMethod, TrainingSchedule, register_method
from ccc_ray.store import read_store

pytestmark = pytest.mark.slow


@dataclass
class TinyConfig(TrainingSchedule):
    steps: int = option(40, "optimiser steps", ge=1)
    batch_size: int = option(64, "global batch size", ge=1)
    class_weight: float = option(1.0, "weight of the cross-entropy toward the target class", ge=0)
    real_mean_weight: float = option(0.1, "weight of matching the real batch's mean pixel (uses the real data)", ge=0)
    learning_rate: float = option(0.05, "Adam learning rate", gt=0)


class TinyGenerator(TrainedMethod):
    """One linear layer from (noise, one-hot class) to an image, trained to be classified as the class."""

    name = "tiny_plugin"
    paper = "none: a test of the method interface"
    kind = "generator"
    config_class = TinyConfig

    def __init__(self, config: TinyConfig, context):
        super().__init__(config, context)
        torch.manual_seed(config.seed)
        size = 1
        for dim in self.image_shape:
            size *= dim
        self.generator = nn.Sequential(nn.Linear(8 + self.num_classes, size), nn.Sigmoid()).to(self.device)
        self.optimizer = torch.optim.Adam(self.generator.parameters(), lr=config.learning_rate)

    def modules(self):
        return {"generator": self.generator}

    def optimizers(self):
        return {"generator": self.optimizer}

    def training_data(self, dataset):
        return torch.utils.data.TensorDataset(dataset.train_images, dataset.train_labels)

    def _images(self, module, targets, rng):
        noise = torch.randn(len(targets), 8, generator=rng, device=self.device)
        codes = torch.cat([noise, F.one_hot(targets, self.num_classes).float()], dim=1)
        return module(codes).view(-1, *self.image_shape)

    def training_step(self, batch, rng, batch_size):
        real_images, _ = batch  # asked for through training_data: orchestration streams it, sharded
        targets = torch.arange(batch_size, device=self.device) % self.num_classes
        images = self._images(self.trainable("generator"), targets, rng)
        logits = self.context.classifier(images)
        loss = (self.config.class_weight * F.cross_entropy(logits, targets)
                + self.config.real_mean_weight * (images.mean() - real_images.mean()).pow(2))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.step += 1
        confidence = torch.softmax(logits.detach(), 1).gather(1, targets[:, None]).mean()
        return {"total": float(loss.detach()), "confidence": float(confidence)}

    @torch.no_grad()
    def sample(self, targets, seed, sources=None):
        targets = self.check_targets(targets).to(self.device)
        return self._images(self.generator, targets, torch.Generator(device=self.device).manual_seed(seed))


@pytest.fixture
def plugin_registered(ray_cluster):
    """The plug-in registered (the one registry line a plug-in package runs on import), on the session's
    shared Ray; this module's classes travel to the workers by value (they are not importable there). Both
    undone afterwards, so later tests' jobs carry no section of a class their workers cannot import."""
    import ray.cloudpickle

    register_method(TinyGenerator)  # the one registry line
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        yield
    finally:
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
        METHODS.pop(TinyGenerator.name, None)


def run(*argv: str) -> None:
    assert cli.main(list(argv)) == 0


def test_a_method_defined_outside_the_package_runs_through_every_stage(plugin_registered, tmp_path, capsys,
                                                                      digits_classifier_file):
    assert METHODS["tiny_plugin"] is TinyGenerator
    common = ["--run.classifier_path", str(digits_classifier_file), "--generate.method", "tiny_plugin",
              "--run.checkpoint_every", "20", "--run.cpus_per_worker", "0.5"]
    # Two Train workers: the plug-in's real batches sharded, its gradients averaged. (That 2 workers train as
    # well as 1 is the generic loop's promise, tested with the built-in methods.)
    out = tmp_path / "w2"
    run("train-generator", *common, "--run.output_dir", str(out), "--run.num_workers", "2",
        "--tiny_plugin.class_weight", "2.0")
    assert (out / "default" / "generator-tiny_plugin.safetensors").is_file()
    run("generate", *common, "--run.output_dir", str(out), "--generate.per_class", "10", "--keep.confidence_bar", "0.5")
    table = read_store(out / "default" / "counterfeits")
    assert set(table.column("method").to_pylist()) == {"tiny_plugin"}
    assert table.num_rows >= 50  # trained: most of 100 samples kept
    capsys.readouterr()

    # --help of train-generator shows the plug-in's own section; attack (a search command) does not.
    run("methods")
    assert "tiny_plugin\n  kind: generator" in capsys.readouterr().out

    # Tune: one trial, two Train workers per trial, the plug-in's own search space.
    space = tmp_path / "tiny-search.yaml"
    space.write_text("tiny_plugin.class_weight: {type: uniform, low: 0.5, high: 2.0}\n")
    run("tune", *common, "--run.output_dir", str(out), "--run.num_workers", "2", "--tune.cpus_per_trial", "0.5",
        "--tune.num_samples", "1", "--tune.search_space", str(space), "--tune.score_per_class", "5",
        "--keep.confidence_bar", "0.5", "--tune.scheduler", "fifo")
    summary = json.loads((out / "default" / "tune-summary.json").read_text())
    assert summary["completed"] == 1 and summary["best"]["objective"] is not None
    assert "tiny_plugin:" in (out / "default" / "tune-best.yaml").read_text()

    # Harden on the plug-in's counterfeits; its re-attack trains the plug-in again against the hardened model.
    run("harden", *common, "--run.output_dir", str(out), "--scorecard.each_round", "false", "--harden.epochs", "1",
        "--harden.reattack_steps", "20",
        "--harden.real_ood_per_set", "20", "--generate.per_class", "10", "--keep.confidence_bar", "0.5")
    report = json.loads((out / "default" / "report.json").read_text())
    assert report["confidence_bar"] == 0.5 and len(report["rounds"]) == 2
    assert (out / "default" / "classifier-hardened.onnx").is_file()
