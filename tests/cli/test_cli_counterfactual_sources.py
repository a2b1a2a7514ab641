"""`generate --generate.sources ... --generate.targets ...` with the counterfactual method: given real images
translated to given classes. Bad input (a target equal to the source's class, an image of the wrong shape, a
source row missing from the data) ends with one line, exit 2, and nothing written; good input writes rows
with their source ids and masks. In-process CLI, no Ray."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ccc_ray import cli
from ccc_ray.classifiers.weights import load_classifier
from ccc_ray.methods.counterfactual import CounterfactualConfig, CounterfactualGAN
from ccc_ray.methods.base import MethodContext
from ccc_ray.methods.generator_file import save_generator
from ccc_ray.store.reader import read_store


@pytest.fixture(scope="module")
def counterfactual_file(tmp_path_factory, digits, digits_classifier_file):
    """A counterfactual generator file bound to the session's classifier, trained for two steps only."""
    classifier, info = load_classifier(digits_classifier_file)
    method = CounterfactualGAN(CounterfactualConfig(base_channels=4, embed_dim=3, batch_size=16),
                               MethodContext(digits.image_shape, digits.num_classes, classifier))
    for step in range(2):
        method.training_step((digits.train_images[:16], digits.train_labels[:16]),
                             torch.Generator().manual_seed(step), 16)
    path = tmp_path_factory.mktemp("counterfactual") / "generator-counterfactual.safetensors"
    save_generator(path, method, list(digits.class_names), info.sha256)
    return path


def generate(capsys, out: Path, classifier: Path, generator: Path, sources: list[str], targets: list[int],
             *extra: str) -> tuple[int, str]:
    code = cli.main(["generate", "--generate.method", "counterfactual", "--run.output_dir", str(out),
                     "--run.classifier_path", str(classifier), "--run.generator_path", str(generator),
                     "--generate.sources", ",".join(sources), "--generate.targets", ",".join(map(str, targets)),
                     *extra])
    return code, capsys.readouterr().err.strip()


def assert_refused(code: int, err: str, out: Path, *needles: str) -> None:
    assert code == 2
    assert len(err.splitlines()) == 1 and "error:" in err, err
    for needle in needles:
        assert needle in err, (needle, err)
    assert not out.exists()  # nothing written: no run folder, no store


def test_target_equal_to_the_source_class(capsys, tmp_path, digits, digits_classifier_file, counterfactual_file):
    own = int(digits.test_labels[3])
    out = tmp_path / "out"
    code, err = generate(capsys, out, digits_classifier_file, counterfactual_file, ["test:0", "test:3"],
                         [(int(digits.test_labels[0]) + 1) % 10, own])
    assert_refused(code, err, out, "test:3", "own class", f"target {own}")


def test_source_row_missing_from_the_data(capsys, tmp_path, digits, digits_classifier_file, counterfactual_file):
    out = tmp_path / "out"
    rows = len(digits.test_images)
    code, err = generate(capsys, out, digits_classifier_file, counterfactual_file, ["test:1", f"test:{rows}"], [1, 2])
    assert_refused(code, err, out, f"test:{rows}", "not a row", f"test:{rows - 1}")


def test_image_of_the_wrong_shape(capsys, tmp_path, digits_classifier_file, counterfactual_file):
    image = tmp_path / "ten.png"
    Image.fromarray(np.full((10, 10), 128, np.uint8)).save(image)
    out = tmp_path / "out"
    code, err = generate(capsys, out, digits_classifier_file, counterfactual_file, [str(image)], [4])
    assert_refused(code, err, out, "ten.png", "10x10", "8x8")


@pytest.mark.parametrize("sources,targets,needle", [
    (["test:0", "test:1"], [3], "one target class per source"),
    (["test:0"], [10], "out of range"),
    (["nowhere.png"], [3], "neither a row"),
])
def test_other_bad_requests(capsys, tmp_path, digits_classifier_file, counterfactual_file, sources, targets, needle):
    out = tmp_path / "out"
    code, err = generate(capsys, out, digits_classifier_file, counterfactual_file, sources, targets)
    assert_refused(code, err, out, needle)


def test_good_requests_store_their_source_ids_and_masks(capsys, tmp_path, digits, digits_classifier_file,
                                                        counterfactual_file):
    image = tmp_path / "eight.png"
    Image.fromarray(np.full((8, 8), 200, np.uint8)).save(image)
    sources = ["test:0", "train:5", str(image)]
    targets = [(int(digits.test_labels[0]) + 1) % 10, (int(digits.train_labels[5]) + 2) % 10, 7]
    out = tmp_path / "out"
    # A two-step generator convinces nobody: a tiny bar and no far gate, so every translation is kept.
    code, err = generate(capsys, out, digits_classifier_file, counterfactual_file, sources, targets,
                         "--keep.confidence_bar", "1e-9", "--far.gate_store", "false")
    assert code == 0, err
    table = read_store(out / "default" / "counterfeits" / "counterfactual-default-sources.parquet", digits.image_shape)
    assert table["source_id"].to_pylist() == ["test:0", "train:5", f"file:{image}"]
    assert table["target"].to_pylist() == targets
    assert all(mask is not None for mask in table["mask"].to_pylist())
    assert (out / "default" / "generate-counterfactual-sources.json").is_file()
