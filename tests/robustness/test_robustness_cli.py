"""`ccc-ray robustness MODEL`: accuracy under PGD per epsilon, printed and written; bad input in one line."""

from __future__ import annotations

import json

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
