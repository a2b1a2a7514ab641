"""`ccc-ray scorecard` end to end through Ray (one task per family), and its bad input (no Ray needed)."""

from __future__ import annotations

import json

import pytest
import torch

from ccc_ray import cli
from ccc_ray.classifiers.weights import load_classifier
from ccc_ray.export.onnx_export import export_onnx

torch.set_num_threads(1)


@pytest.mark.slow
def test_white_and_black_box_scorecards_write_json_markdown_and_chart(ray_cluster, capsys, tmp_path, digits,
                                                                      digits_classifier_file):
    model, info = load_classifier(digits_classifier_file)
    onnx_path = tmp_path / "classifier.onnx"
    export_onnx(model, onnx_path, list(info.class_names), info.image_shape, "max_softmax", 0.5)
    budget = ["--scorecard.per_class", "1", "--scorecard.generator_steps", "3", "--scorecard.generations", "2",
              "--inversion.batch_size", "20", "--gradient_ascent.steps", "5", "--real_pgd.restarts", "1",
              "--real_square.queries", "100", "--keep.confidence_bar", "0.9"]
    assert cli.main(["scorecard", str(digits_classifier_file), "--run.output_dir", str(tmp_path / "white"),
                     *budget]) == 0
    card = json.loads((tmp_path / "white" / "default" / "scorecard.json").read_text())
    from ccc_ray.methods import METHODS

    expected = [name for name, cls in METHODS.items() if cls.kind in ("generator", "search")]
    assert [row["family"] for row in card["families"]] == expected  # every applicable registered family
    assert {"inversion", "direct_encoding", "cppn", "gradient_ascent", "substrate_gan"} <= set(expected)
    assert card["confidence_bar"] == 0.9 and card["model_kind"] == "torch"
    assert card["far"]["space"] == "pixels" and card["ood"]["source"] == "test split"
    assert all(row["samples"] == 10 and row["evaluations"] > 0 for row in card["families"])
    out = capsys.readouterr().out
    assert "gradient_ascent" in out and "evals/success" in out  # the table is printed
    for name in ("scorecard.md", "scorecard.png"):
        assert (tmp_path / "white" / "default" / name).stat().st_size > 0

    assert cli.main(["scorecard", str(onnx_path), "--run.output_dir", str(tmp_path / "black"), *budget]) == 0
    card = json.loads((tmp_path / "black" / "default" / "scorecard.json").read_text())
    assert [row["family"] for row in card["families"]] == ["direct_encoding", "cppn", "real_square"]  # black box only
    assert card["ood"] == {**card["ood"], "score": "max_softmax", "ood_threshold": 0.5, "source": "ONNX metadata"}


@pytest.mark.parametrize("argv, needle", [
    (["--scorecard.families", "nope"], "unknown generator or search method 'nope'"),
    (["{bad_file}"], "is neither a ccc-ray torch classifier (.safetensors) nor an ONNX model"),
    (["{missing}.onnx"], "does not exist"),
    (["{onnx}", "--scorecard.families", "gradient_ascent"], "gradient_ascent needs gradients"),
])
def test_bad_input_is_one_line_and_exit_2_before_ray(capsys, tmp_path, digits_classifier_file, argv, needle):
    bad_file = tmp_path / "model.bin"
    bad_file.write_text("not a model")
    model, info = load_classifier(digits_classifier_file)
    onnx_path = tmp_path / "classifier.onnx"
    export_onnx(model, onnx_path, list(info.class_names), info.image_shape)
    argv = [arg.format(bad_file=bad_file, missing=tmp_path / "missing", onnx=onnx_path) for arg in argv]
    code = cli.main(["scorecard", *argv, "--run.output_dir", str(tmp_path / "out"),
                     "--run.classifier_path", str(digits_classifier_file)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and needle in err, err
    assert not (tmp_path / "out").exists()  # nothing written
