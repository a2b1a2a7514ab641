"""`ccc-ray robustness MODEL`: accuracy under PGD per epsilon, printed and written; bad input in one line."""

from __future__ import annotations

import json

import pytest

from ccc_ray import cli


def test_robustness_prints_one_row_per_epsilon_and_accuracy_falls(capsys, tmp_path, digits_classifier_file):
    code = cli.main(["robustness", str(digits_classifier_file), "--robustness.epsilons", "0,0.1",
                     "--robustness.samples", "100", "--robustness.steps", "5", "--run.output_dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0 and "epsilon 0.000" in out and "epsilon 0.100" in out
    rows = json.loads(next((tmp_path / "default").glob("robustness-*.json")).read_text())
    assert [row["epsilon"] for row in rows] == [0.0, 0.1]
    assert rows[1]["accuracy"] < rows[0]["accuracy"]


def test_an_onnx_model_or_a_bad_epsilon_is_one_line(capsys, tmp_path):
    for argv, needle in ((["robustness", str(tmp_path / "m.onnx")], "PGD needs gradients"),
                         (["robustness", "--robustness.epsilons", "0,2"], "robustness.epsilons")):
        code = cli.main([*argv, "--run.output_dir", str(tmp_path)])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and needle in err, err


def test_a_k_plus_1_model_under_each_threat_model(capsys, tmp_path, digits, digits_classifier_file):
    from ccc_ray.classifiers.weights import load_classifier, save_classifier
    from ccc_ray.classifiers.widen import widen_classifier

    classifier, info = load_classifier(digits_classifier_file)
    joint_file = tmp_path / "joint.safetensors"
    save_classifier(joint_file, widen_classifier(classifier), info.config, info.image_shape, list(info.class_names),
                    info.data_name, reject_class=True)
    rows = {}
    for attack in ("class_head", "all_outputs", "wrong_class"):
        code = cli.main(["robustness", str(joint_file), "--robustness.epsilons", "0,0.1", "--robustness.samples", "100",
                         "--robustness.steps", "5", "--robustness.attack", attack, "--run.output_dir", str(tmp_path),
                         "--run.run_id", attack])
        out = capsys.readouterr().out
        assert code == 0, out
        rows[attack] = json.loads((tmp_path / attack / "robustness-joint.json").read_text())
        assert ("rejected" in out) == (attack != "class_head")
    for attack in ("all_outputs", "wrong_class"):
        for row in rows[attack]:
            assert row["attack"] == attack
            assert row["accuracy"] + row["rejected"] + row["wrong"] == pytest.approx(1.0)
            assert row["class_head"] >= row["accuracy"]  # right over K + 1 outputs implies right over K
        assert rows[attack][1]["accuracy"] < rows[attack][0]["accuracy"]
    assert "rejected" not in rows["class_head"][0]
    # Clean, the attack does not matter: the class head's accuracy is the same figure in every run.
    clean = rows["class_head"][0]["accuracy"]
    assert clean == rows["all_outputs"][0]["class_head"] == rows["wrong_class"][0]["class_head"]
