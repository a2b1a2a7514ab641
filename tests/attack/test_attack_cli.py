"""`ccc-ray attack` bad input: one line naming the problem, exit code 2, nothing written, Ray never started.

These run the CLI in-process; every check fires on the driver before Ray starts.
"""

from __future__ import annotations

import pytest
import ray
import torch

from ccc_ray import cli
from ccc_ray.classifiers.weights import load_classifier
from ccc_ray.export.onnx_export import export_onnx

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory, digits_classifier_file):
    model, info = load_classifier(digits_classifier_file)
    path = tmp_path_factory.mktemp("onnx") / "classifier.onnx"
    export_onnx(model, path, list(info.class_names), info.image_shape)
    return path


def attack(capsys, tmp_path, classifier_file, *argv: str) -> tuple[int, str]:
    code = cli.main(["attack", "--run.output_dir", str(tmp_path / "out"), "--run.classifier_path",
                     str(classifier_file), *argv])
    return code, capsys.readouterr().err.strip()


def assert_refused(code: int, err: str, tmp_path, *needles: str) -> None:
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("ccc-ray attack: error:"), err
    for needle in needles:
        assert needle in err, (needle, err)
    assert not (tmp_path / "out").exists()
    assert not ray.is_initialized()


@pytest.mark.parametrize("size", ["1", "0", "-5"])
def test_population_below_two(capsys, tmp_path, digits_classifier_file, size):
    code, err = attack(capsys, tmp_path, digits_classifier_file, "--direct_encoding.population_size", size)
    assert_refused(code, err, tmp_path, "direct_encoding.population_size", "at least 2", f"got {size}")


@pytest.mark.parametrize("targets, bad", [("3,10", "10"), ("-1", "-1"), ("99", "99")])
def test_target_class_out_of_range(capsys, tmp_path, digits_classifier_file, targets, bad):
    code, err = attack(capsys, tmp_path, digits_classifier_file, "--attack.targets", targets)
    assert_refused(code, err, tmp_path, "attack.targets", f"target class {bad} is out of range")


def test_target_class_out_of_range_for_an_onnx_model(capsys, tmp_path, digits_classifier_file, onnx_file):
    code, err = attack(capsys, tmp_path, digits_classifier_file, "--attack.onnx_path", str(onnx_file),
                       "--attack.targets", "10")
    assert_refused(code, err, tmp_path, "target class 10", "0 to 9")


def test_onnx_input_shape_does_not_fit_the_data(capsys, tmp_path, digits_classifier_file, onnx_file):
    code, err = attack(capsys, tmp_path, digits_classifier_file, "--attack.onnx_path", str(onnx_file),
                       "--data.image_size", "16")
    assert_refused(code, err, tmp_path, "attack.onnx_path", "takes images 1x8x8", "1x16x16")


def test_onnx_model_missing_or_not_onnx(capsys, tmp_path, digits_classifier_file):
    code, err = attack(capsys, tmp_path, digits_classifier_file, "--attack.onnx_path", str(tmp_path / "absent.onnx"))
    assert_refused(code, err, tmp_path, "attack.onnx_path", "absent.onnx", "does not exist")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    code, err = attack(capsys, tmp_path, digits_classifier_file, "--attack.onnx_path", str(garbage))
    assert_refused(code, err, tmp_path, "garbage.onnx", "not a valid ONNX model")


def test_gradient_ascent_needs_a_torch_model(capsys, tmp_path, digits_classifier_file, onnx_file):
    code, err = attack(capsys, tmp_path, digits_classifier_file, "--attack.onnx_path", str(onnx_file),
                       "--attack.method", "gradient_ascent")
    assert_refused(code, err, tmp_path, "gradient_ascent needs gradients", "direct_encoding or cppn")


@pytest.mark.parametrize("argv, needle", [
    (["--attack.method", "simulated_annealing"], "attack.method: unknown search method 'simulated_annealing'; "
                                                 "registered: direct_encoding, cppn, gradient_ascent"),
    (["--keep.confidence_bar", "1.5"], "keep.confidence_bar"),
    (["--attack.per_class", "0"], "attack.per_class"),
    (["--attack.method", "cppn", "--cppn.population_size", "1"], "cppn.population_size: must be at least 2"),
    (["--direct_encoding.mutation_rate", "2"], "direct_encoding.mutation_rate"),
])
def test_other_bad_settings(capsys, tmp_path, digits_classifier_file, argv, needle):
    code, err = attack(capsys, tmp_path, digits_classifier_file, *argv)
    assert_refused(code, err, tmp_path, needle)


def test_missing_classifier_file(capsys, tmp_path):
    code, err = attack(capsys, tmp_path, tmp_path / "absent.safetensors")
    assert_refused(code, err, tmp_path, "absent.safetensors", "does not exist")
