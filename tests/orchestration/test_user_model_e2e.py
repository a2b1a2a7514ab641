"""A user's own trained models, hardened without retraining: import -> attack -> harden -> ONNX -> predict.

Two models stand for a user's: `digits_net`, defined only in this file (`package.module:factory`), trained
on byte values normalised to [-1, 1] and saved as safetensors; and torchvision's resnet18 on the digits
upsampled to 16x16, trained on grey images repeated to RGB with ImageNet's mean and std and saved with
`torch.save(state_dict)`. Each is trained here, outside ccc-ray, as its user would have; ccc-ray only
imports it (no training), attacks it, hardens it (reduced: 1 epoch, a tiny re-attack) and exports it.
The exported file must take the user's raw images and give what the user's pipeline gives.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import ray
import torch
import torchvision
import torchvision.transforms.v2
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from ccc_ray import cli
from ccc_ray.classifiers.guard import DataGuard
from ccc_ray.classifiers.preprocessing import user_model
from ccc_ray.classifiers.weights import load_classifier
from ccc_ray.data.sources import DataConfig, load_dataset

pytestmark = pytest.mark.slow
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def digits_net(image_shape, num_classes):
    """The user's model, defined only here."""
    channels, height, width = image_shape
    return nn.Sequential(nn.Conv2d(channels, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(16 * (height // 2) * (width // 2), 64), nn.ReLU(), nn.Linear(64, num_classes))


@dataclass
class UserModel:
    name: str
    arch: str
    weights_file: str
    image_size: int | None
    flags: list[str]  # the preprocessing, declared to ccc-ray
    input_range: float
    pipeline: Callable[[torch.Tensor], torch.Tensor]  # the user's own: raw images -> model input
    epochs: int  # of the user's training

    def build(self, image_shape, num_classes) -> nn.Module:
        if self.arch == "resnet18":
            return torchvision.models.resnet18(num_classes=num_classes)
        return digits_net(image_shape, num_classes)


FACTORY = UserModel("factory", f"{__name__}:digits_net", "digits-net.safetensors", None,
                    ["--classifier.input_range", "255", "--classifier.mean", "127.5", "--classifier.std", "127.5"],
                    255.0, lambda raw: (raw - 127.5) / 127.5, epochs=3)
RESNET = UserModel("resnet18", "resnet18", "resnet18-digits.pt", 16,
                   ["--classifier.mean", ",".join(map(str, IMAGENET_MEAN)),
                    "--classifier.std", ",".join(map(str, IMAGENET_STD)), "--classifier.grey_to_rgb", "true"],
                   1.0, lambda raw: torchvision.transforms.v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)(
                       raw.expand(-1, 3, -1, -1)), epochs=2)  # 1 left BatchNorm's statistics raw: 41% on one CPU


def train_as_the_user_did(spec: UserModel, dataset, folder) -> tuple[nn.Module, str]:
    """The user's training, before ccc-ray: their model, their pipeline, their weights file."""
    torch.manual_seed(0)
    grey_shape = dataset.image_shape
    model = spec.build((3, *grey_shape[1:]) if spec.arch == "resnet18" else grey_shape, dataset.num_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    model.train()
    for _ in range(spec.epochs):
        for batch in torch.randperm(len(dataset.train_labels)).split(64):
            raw = dataset.train_images[batch] * spec.input_range
            loss = nn.functional.cross_entropy(model(spec.pipeline(raw)), dataset.train_labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    path = folder / spec.weights_file
    if path.suffix == ".pt":
        torch.save(model.state_dict(), path)
    else:
        save_file(model.state_dict(), path)
    return model.eval(), str(path)


def users_accuracy(spec: UserModel, model: nn.Module, dataset) -> float:
    with torch.no_grad():
        logits = model(spec.pipeline(dataset.test_images * spec.input_range))
    return float((logits.argmax(1) == dataset.test_labels).float().mean())


@pytest.fixture(scope="module")
def ray_started_here():
    """A local Ray started from this file's folder, for both models. Ray puts the driver's folder on its
    workers' path, so they import `digits_net` from here as a user's workers import their factory module
    from the folder the job runs in (or its --working-dir). A Ray an earlier test started has another
    folder: start afresh."""
    ray.shutdown()
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(Path(__file__).parent)
        yield
        ray.shutdown()


def ccc_ray(*argv: str) -> None:
    assert cli.main(list(argv)) == 0, argv[0]


@pytest.mark.parametrize("spec", [FACTORY, RESNET], ids=lambda spec: spec.name)
def test_users_model_is_hardened_without_retraining(tmp_path, capsys, ray_started_here, spec):
    dataset = load_dataset(DataConfig(image_size=spec.image_size))
    trained, weights = train_as_the_user_did(spec, dataset, tmp_path)
    data = ["--data.image_size", str(spec.image_size)] if spec.image_size else []
    common = ["--run.output_dir", str(tmp_path), "--run.run_id", spec.name, *data]
    keep = ["--keep.confidence_bar", "0.5", "--generate.per_class", "10"]
    generator = ["--inversion.batch_size", "64", "--run.checkpoint_every", "30"]

    ccc_ray("import-classifier", *common, "--classifier.arch", spec.arch, "--classifier.weights", weights,
            *spec.flags)
    run = tmp_path / spec.name
    record = json.loads((run / "import-classifier.json").read_text())
    assert record["test_accuracy"] == pytest.approx(users_accuracy(spec, trained, dataset), abs=1e-6)
    assert record["test_accuracy"] > 0.5  # the user's training, kept: ccc-ray did not train it
    ccc_ray("train-generator", *common, *generator, "--inversion.steps", "30", "--keep.confidence_bar", "0.5")
    ccc_ray("generate", *common, *keep)
    ccc_ray("harden", *common, *keep, *generator, "--scorecard.each_round", "false", "--harden.epochs", "1",
            "--harden.reattack_steps", "10",
            "--harden.noise_images", "50", "--harden.real_ood_per_set", "10")
    capsys.readouterr()

    report = json.loads((run / "report.json").read_text())
    assert [row["round"] for row in report["rounds"]] == [0, 1]
    assert report["rounds"][0]["classifier_sha256"] == record["classifier_sha256"]
    assert max(report["export"]["parity_max_abs_probability_difference"].values()) <= 1e-5
    onnx_file = run / "classifier-hardened.onnx"
    props = {p.key: json.loads(p.value) for p in onnx.load(str(onnx_file)).metadata_props}
    assert props["ccc_ray.input_range"] == spec.input_range and props["ccc_ray.reject_class"] is True

    # The exported file takes the user's raw images and gives what the user's pipeline gives.
    hardened, info = load_classifier(run / "rounds" / f"{spec.name}.r1" / "classifier-hardened.safetensors")
    stored = dataset.test_images[:6].mul(255).round()  # uint8 values: what the PNGs below hold
    raw = stored / 255 * spec.input_range
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"images": raw.numpy().astype(np.float32)})
    assert isinstance(hardened, DataGuard)  # default harden.guard auto: on for images this small
    with torch.no_grad():
        # the user's pipeline in front of the user's model is what the hardened model runs inside its guard
        users = user_model(hardened.classifier)(spec.pipeline(raw))
        assert (users - hardened.classifier(stored / 255)).abs().max() <= 1e-4
        expected = hardened(stored / 255).softmax(1)
    assert (torch.from_numpy(logits).softmax(1) - expected).abs().max() <= 1e-5

    # `ccc-ray predict` on image files reads [0, 1] pixels and gets the same answer.
    folder = tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(stored):
        Image.fromarray(image[0].numpy().astype(np.uint8)).save(folder / f"{i}.png")
    assert cli.main(["predict", str(onnx_file), str(folder)]) == 0
    rows = {line.split("\t")[0]: line.split("\t") for line in capsys.readouterr().out.strip().splitlines()[1:]}
    names = list(info.class_names) + ["reject"]
    for i in range(len(stored)):
        row = rows[str(folder / f"{i}.png")]
        assert row[1] == names[int(expected[i].argmax())]
        assert float(row[2]) == pytest.approx(float(expected[i].max()), abs=1e-5)
