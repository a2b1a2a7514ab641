"""The judges: accurate on held-out real digits, independent of the attacked model, strict about their input."""

from __future__ import annotations

import pytest
import torch

from ccc_ray import cli
from ccc_ray.classifiers.build import ClassifierConfig
from ccc_ray.classifiers.small_cnn import SmallCNN
from ccc_ray.classifiers.training import predict_logits
from ccc_ray.classifiers.weights import load_classifier, save_classifier
from ccc_ray.counterfeits.judge import JudgeSettings, fit_judges, reference_model
from ccc_ray.errors import CccError
from ccc_ray.export.onnx_export import export_onnx

torch.set_num_threads(1)


def test_the_default_judges_are_accurate_on_held_out_digits(digits):
    ensemble, nearest = fit_judges(JudgeSettings(), digits)
    assert (ensemble.name, ensemble.mechanism, nearest.name, nearest.mechanism) == (
        "ensemble", "trained", "nearest", "nearest_image")
    assert ensemble.accuracy >= 0.98 and nearest.accuracy >= 0.98
    assert len(ensemble.members) == 3
    # Trained once per process and deterministic: the same settings give the same judge object.
    assert fit_judges(JudgeSettings(judges=["ensemble"]), digits)[0] is ensemble


def test_a_noisy_digit_keeps_its_class_with_the_judges(digits):
    """The judges are there to say what a perturbed real image is: mild noise must not move them."""
    noise = 0.1 * torch.randn(digits.test_images[:100].shape, generator=torch.Generator().manual_seed(0))
    noisy = (digits.test_images[:100] + noise).clamp(0, 1)
    for judge in fit_judges(JudgeSettings(), digits):
        assert float((judge.classify(noisy) == digits.test_labels[:100]).float().mean()) >= 0.95, judge.name


def test_a_reference_model_file_judges_and_must_fit_the_data(tmp_path, digits, digits_classifier_file):
    (judge,) = fit_judges(JudgeSettings(judges=[str(digits_classifier_file)]), digits)
    model, _ = load_classifier(digits_classifier_file)
    own = predict_logits(model, digits.test_images).argmax(1)
    assert torch.equal(judge.classify(digits.test_images), own)  # the user's model, answering as itself
    assert judge.accuracy == pytest.approx(float((own == digits.test_labels).float().mean()))
    three = SmallCNN(digits.image_shape, 3, 8, 16, 0.0)
    wrong_classes = tmp_path / "three.safetensors"
    save_classifier(wrong_classes, three, ClassifierConfig(), digits.image_shape, ["a", "b", "c"], "digits")
    with pytest.raises(CccError, match="does not fit the data"):
        reference_model(str(wrong_classes), digits)
    onnx_file = tmp_path / "three.onnx"
    export_onnx(three, onnx_file, ["a", "b", "c"], digits.image_shape, "max_softmax", 0.5)
    with pytest.raises(CccError, match="3 outputs"):
        reference_model(str(onnx_file), digits)
    with pytest.raises(CccError, match="does not exist"):
        reference_model(str(tmp_path / "absent.onnx"), digits)


def test_bad_judge_settings_end_the_cli_with_one_line(capsys, tmp_path):
    for flags, needle in ((["--judge.judges", "oracle"], "unknown judge 'oracle'"),
                          (["--scorecard.budget_scales", "1,0.5"], "scorecard.budget_scales")):
        code = cli.main(["scorecard", "--run.output_dir", str(tmp_path / "out"), *flags])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and needle in err, err
    assert not (tmp_path / "out").exists()
