"""The tune objective and search space: documented arithmetic, and bad spaces refused before any trial."""

from __future__ import annotations

import pytest

from ccc_ray import cli
from ccc_ray.errors import CccError
from ccc_ray.job import JobConfig, apply_overrides
from ccc_ray.tuning.objective import objective_parts
from ccc_ray.tuning.search_space import default_space_file, load_search_space


def test_objective_rewards_confidence_and_penalises_copies_and_collapse():
    perfect = objective_parts(1.0, 3.0, 1.1)
    assert perfect["objective"] == 1.0 and perfect["distance_penalty"] == 0 and perfect["diversity_penalty"] == 0
    assert objective_parts(0.9, 3.0, 1.0)["objective"] == pytest.approx(0.9)
    near_copies = objective_parts(1.0, 1.0, 1.0)
    assert near_copies["distance_penalty"] == pytest.approx(0.5) and near_copies["objective"] == pytest.approx(0.5)
    collapsed = objective_parts(1.0, 3.0, 0.0)
    assert collapsed["objective"] == pytest.approx(0.0)
    assert objective_parts(0.95, 2.5, 0.7)["objective"] == pytest.approx(0.95 - 0.3)


def test_packaged_space_loads_and_every_corner_is_a_valid_config():
    assert default_space_file("inversion").parent.name == "methods"  # beside the method's file
    space = load_search_space(default_space_file("inversion"))
    assert "inversion.kl_weight" in space and space["inversion.kl_weight"]["type"] == "loguniform"
    job = apply_overrides(JobConfig(), {"inversion.kl_weight": 2.0, "inversion.cosine_weight": 0.3})
    inversion = job.method_config("inversion")
    assert inversion.kl_weight == 2.0 and inversion.cosine_weight == 0.3
    assert inversion.orthogonality_weight == JobConfig().method_config("inversion").orthogonality_weight


@pytest.mark.parametrize("content, needle", [
    ("", "empty"),
    ("# only a comment\n", "empty"),
    ("inversion.no_such_weight: {type: uniform, low: 0, high: 1}\n", "unknown parameter"),
    ("nosection.kl_weight: {type: uniform, low: 0, high: 1}\n", "unknown parameter"),
    ("inversion.kl_weight: {type: uniform, low: -1.0, high: 1.0}\n", "must not be negative"),
    ("inversion.kl_weight: {type: uniform, low: 2.0, high: 1.0}\n", "must be below"),
    ("inversion.kl_weight: {type: loguniform, low: 0.0, high: 1.0}\n", "low > 0"),
    ("inversion.kl_weight: {type: gaussian, low: 0.1, high: 1.0}\n", "type"),
    ("inversion.conditioning: {type: choice, values: []}\n", "non-empty"),
    ("inversion.steps: {type: randint, low: -5, high: 0}\n", "steps"),
])
def test_bad_spaces_are_refused(tmp_path, content, needle):
    space = tmp_path / "space.yaml"
    space.write_text(content)
    with pytest.raises(CccError, match=needle):
        load_search_space(space)


def test_cli_refuses_a_bad_space_before_any_trial(capsys, tmp_path, digits_classifier_file):
    space = tmp_path / "space.yaml"
    space.write_text("inversion.kl_weight: {type: uniform, low: -0.5, high: 1.0}\n")
    out = tmp_path / "runs"
    code = cli.main(["tune", "--tune.search_space", str(space), "--run.output_dir", str(out),
                     "--run.classifier_path", str(digits_classifier_file)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "inversion.kl_weight" in err
    assert not out.exists()  # no search folder, no trial


@pytest.mark.parametrize("flag, value", [("--tune.num_samples", "0"), ("--tune.scheduler", "pbt"),
                                         ("--tune.max_concurrent_trials", "0")])
def test_bad_tune_settings(capsys, tmp_path, flag, value):
    code = cli.main(["tune", flag, value, "--run.output_dir", str(tmp_path / "o")])
    assert code == 2 and flag.lstrip("-") in capsys.readouterr().err


@pytest.mark.parametrize("method", ["inversion", "counterfactual", "substrate_gan"])
def test_every_trained_method_has_a_space_whose_corners_are_valid_configs(method):
    space = load_search_space(default_space_file(method))
    assert space and all(name.startswith(f"{method}.") for name in space)
    for corner in ("low", "high"):
        values = {name: spec[corner] for name, spec in space.items() if corner in spec}
        job = apply_overrides(JobConfig(), values)  # each drawn value is checked like a flag
        config = job.method_config(method)
        for name, value in values.items():
            assert getattr(config, name.split(".", 1)[1]) == pytest.approx(value)
