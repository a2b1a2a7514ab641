"""`ccc-ray import-classifier` adopts a user's trained model without training it; bad input is one line, exit 2.

The user's model is defined only here (`digits_net`) and trained here, outside ccc-ray, on its own
pipeline (byte values, normalised to about [-1, 1]); its weights go to a safetensors file, as a user's would.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from ccc_ray import cli
from ccc_ray.classifiers.preprocessing import user_model
from ccc_ray.classifiers.weights import fingerprint, load_classifier

torch.set_num_threads(1)
PREPROCESSING = ["--classifier.input_range", "255", "--classifier.mean", "127.5", "--classifier.std", "127.5"]


def digits_net(image_shape, num_classes):
    channels, height, width = image_shape
    return nn.Sequential(nn.Conv2d(channels, 8, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8 * height * width, num_classes))


def users_pipeline(images: torch.Tensor) -> torch.Tensor:
    """What the user's own code does to an image in [0, 1] before their model sees it."""
    return (images * 255 - 127.5) / 127.5


@pytest.fixture(scope="module")
def user_weights(tmp_path_factory, digits):
    """The user's trained model and its weights file (a few epochs: enough to be far from chance)."""
    torch.manual_seed(0)
    model = digits_net(digits.image_shape, digits.num_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(3):
        for batch in torch.randperm(len(digits.train_labels)).split(64):
            loss = nn.functional.cross_entropy(model(users_pipeline(digits.train_images[batch])),
                                               digits.train_labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    path = tmp_path_factory.mktemp("user") / "digits-net.safetensors"
    save_file(model.state_dict(), path)
    return model.eval(), path


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip()


def test_import_records_fingerprint_and_test_accuracy(capsys, tmp_path, digits, user_weights):
    model, weights = user_weights
    code, out, err = run_cli(capsys, "import-classifier", "--run.output_dir", str(tmp_path), "--run.run_id", "mine",
                             "--classifier.arch", f"{__name__}:digits_net", "--classifier.weights", str(weights),
                             *PREPROCESSING)
    assert code == 0, err
    run = tmp_path / "mine"
    loaded, info = load_classifier(run / "classifier.safetensors", digits.image_shape, digits.num_classes)
    assert fingerprint(user_model(loaded)) == fingerprint(model)  # the user's weights, untrained by us
    with torch.no_grad():
        expected = float((model(users_pipeline(digits.test_images)).argmax(1) == digits.test_labels).float().mean())
    assert expected > 0.8
    record = json.loads((run / "import-classifier.json").read_text())
    assert record["test_accuracy"] == pytest.approx(expected, abs=1e-9)
    assert record["classifier_sha256"] == info.sha256 == json.loads(out)["classifier_sha256"]
    assert record["preprocessing"] == {"input_range": 255.0, "mean": [127.5], "std": [127.5], "grey_to_rgb": False}
    assert record["test_images"] == len(digits.test_labels)


def test_undeclared_preprocessing_is_not_applied(capsys, tmp_path, user_weights, digits):
    model, weights = user_weights  # imported without its preprocessing: the model sees [0, 1] images
    code, _, err = run_cli(capsys, "import-classifier", "--run.output_dir", str(tmp_path),
                           "--classifier.arch", f"{__name__}:digits_net", "--classifier.weights", str(weights))
    assert code == 0, err
    with torch.no_grad():
        as_is = float((model(digits.test_images).argmax(1) == digits.test_labels).float().mean())
    record = json.loads((tmp_path / "default" / "import-classifier.json").read_text())
    assert record["test_accuracy"] == pytest.approx(as_is, abs=1e-9)


def assert_one_line(capsys, tmp_path, argv, *needles):
    code, out, err = run_cli(capsys, *argv, "--run.output_dir", str(tmp_path / "runs"))
    assert code == 2, (out, err)
    assert len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, (needle, err)
    assert not (tmp_path / "runs" / "default" / "classifier.safetensors").exists()


def test_harden_refuses_an_onnx_model(capsys, tmp_path):
    onnx_file = tmp_path / "theirs.onnx"
    onnx_file.write_bytes(b"an onnx graph")
    assert_one_line(capsys, tmp_path, ["harden", "--run.classifier_path", str(onnx_file)],
                    "theirs.onnx", "ONNX-only model can be scored", "not hardened")


def test_import_refuses_an_onnx_model_as_weights(capsys, tmp_path):
    onnx_file = tmp_path / "theirs.onnx"
    onnx_file.write_bytes(b"an onnx graph")
    assert_one_line(capsys, tmp_path, ["import-classifier", "--classifier.arch", "resnet18",
                                       "--classifier.weights", str(onnx_file)], "ONNX-only model can be scored")


def test_import_needs_weights(capsys, tmp_path):
    assert_one_line(capsys, tmp_path, ["import-classifier", "--classifier.arch", "resnet18"],
                    "classifier.weights", "--classifier.weights FILE")


@pytest.mark.parametrize("flags, needles", [
    (["--classifier.mean", "0.485,0.456,0.406", "--classifier.std", "0.229,0.224,0.225"],
     ["classifier.mean: 3 values, but the model sees 1-channel images", "grey_to_rgb true"]),
    (["--classifier.grey_to_rgb", "true", "--data.channels", "3"], ["classifier.grey_to_rgb", "3 channels already"]),
    (["--classifier.std", "0.5,0"], ["classifier.std: must be positive, got 0.0"]),
    (["--classifier.input_range", "-255"], ["classifier.input_range: must be positive"]),
])
def test_preprocessing_that_does_not_match_the_model(capsys, tmp_path, user_weights, flags, needles):
    _, weights = user_weights
    assert_one_line(capsys, tmp_path, ["import-classifier", "--classifier.arch", f"{__name__}:digits_net",
                                       "--classifier.weights", str(weights), *flags], *needles)


def test_weights_of_another_model(capsys, tmp_path, user_weights):
    _, weights = user_weights
    assert_one_line(capsys, tmp_path, ["import-classifier", "--classifier.arch", "resnet18",
                                       "--classifier.weights", str(weights)], "do not fit the model")
