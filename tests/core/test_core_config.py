"""ccc_ray/config.py and the job config: YAML, dotted overrides, argparse flags, validation errors."""

import argparse
import dataclasses

import pytest

from ccc_ray.config import add_config_arguments, overrides_from_args, read_yaml
from ccc_ray.errors import CccError
from ccc_ray.job import JobConfig, dump_job, job_from_tree, job_to_tree, load_job, section_classes


def load_config(_cls, path=None, overrides=None):
    return load_job(path, overrides)


def config_from_dict(_cls, tree):
    return job_from_tree(tree)


@pytest.mark.parametrize("tree, key", [
    ({"dta": {}}, "dta"),
    ({"data": {"nmae": "digits"}}, "nmae"),
    ({"generate": {"treshold": 0.5}}, "treshold"),
])
def test_unknown_setting_is_an_error_naming_the_key(tree, key):
    with pytest.raises(CccError, match=f"unknown (setting|section) '{key}'"):
        config_from_dict(JobConfig, tree)


@pytest.mark.parametrize("tree, message", [
    ({"inversion": {"population_size": 3}}, r"^inversion\.population_size: inversion has no setting "
                                            r"'population_size'; it belongs to sections direct_encoding and cppn"),
    ({"generate": {"steps": 3}}, r"^generate\.steps: generate has no setting 'steps'; it belongs to sections "
                                 r".*inversion"),
    ({"cppn": {"kl_weight": 1}}, r"belongs to section inversion \(--inversion\.kl_weight\)"),
])
def test_a_setting_of_another_section_is_refused_naming_its_section(tree, message):
    with pytest.raises(CccError, match=message):
        config_from_dict(JobConfig, tree)


def test_every_registered_method_has_its_own_section():
    from ccc_ray.methods import METHODS

    job = load_config(JobConfig, overrides={"inversion.steps": "7", "cppn.max_hidden": "4"})
    assert set(METHODS) <= set(section_classes())
    assert job.method_config("inversion").steps == 7 and job.method_config("cppn").max_hidden == 4
    assert job.method_config("direct_encoding") == METHODS["direct_encoding"].config_class()


@pytest.mark.parametrize("tree, where", [
    ({"classifier": {"epochs": "many"}}, "classifier.epochs"),
    ({"classifier": {"epochs": 2.5}}, "classifier.epochs"),
    ({"classifier": {"epochs": True}}, "classifier.epochs"),
    ({"keep": {"confidence_bar": "high"}}, "keep.confidence_bar"),
    ({"inversion": {"conditioning": "two_hot"}}, "inversion.conditioning"),
    ({"run": {"use_gpu": "maybe"}}, "run.use_gpu"),
    ({"data": {"image_size": "big"}}, "data.image_size"),
    ({"data": "digits"}, "data"),
])
def test_wrong_type_is_an_error_naming_the_key(tree, where):
    with pytest.raises(CccError, match=f"^{where}: "):
        config_from_dict(JobConfig, tree)


def test_values_are_coerced_to_the_annotated_types():
    config = config_from_dict(JobConfig, {
        "classifier": {"epochs": "3", "learning_rate": "0.5"},
        "run": {"use_gpu": "false", "storage_path": "none"},
        "data": {"image_size": "16", "channels": "null"},
    })
    assert config.classifier.epochs == 3 and isinstance(config.classifier.epochs, int)
    assert config.classifier.learning_rate == 0.5
    assert config.run.use_gpu is False
    assert config.run.storage_path is None
    assert config.data.image_size == 16 and config.data.channels is None
    # Untouched keys keep their defaults.
    assert config.classifier.batch_size == JobConfig().classifier.batch_size


def test_load_config_applies_yaml_then_overrides(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("classifier:\n  epochs: 5\n  width: 8\nkeep:\n  confidence_bar: 0.9\ngenerate:\n  seed: 2\n")
    config = load_config(JobConfig, path, {"classifier.epochs": "7", "generate.seed": "3", "data.split_seed": 4})
    assert config.classifier.epochs == 7  # the override wins over the file
    assert config.classifier.width == 8  # the file wins over the default
    assert config.keep.confidence_bar == 0.9
    assert config.generate.seed == 3
    assert config.data.split_seed == 4
    assert config.classifier.hidden == JobConfig().classifier.hidden


def test_override_below_a_value_is_an_error(tmp_path):
    with pytest.raises(CccError, match="--data.name.x: settings are named section.field"):
        load_config(JobConfig, overrides={"data.name": "digits", "data.name.x": "1"})


@pytest.mark.parametrize("threshold", ["0", "-0.1", "1.5"])
def test_confidence_bar_outside_zero_one_is_rejected(threshold):
    with pytest.raises(CccError, match=r"^keep\.confidence_bar: must lie in \(0, 1\]"):
        load_config(JobConfig, overrides={"keep.confidence_bar": threshold})


def test_confidence_bar_of_one_is_accepted():
    assert load_config(JobConfig, overrides={"keep.confidence_bar": "1"}).keep.confidence_bar == 1.0


@pytest.mark.parametrize("overrides, where", [
    ({"data.name": "imagenet"}, "data.name"),
    ({"data.name": "mnist"}, "data.root"),
    ({"data.test_fraction": "1"}, "data.test_fraction"),
    ({"classifier.dropout": "1"}, "classifier.dropout"),
    ({"inversion.kl_weight": "0", "inversion.ce_weight": "0"}, "inversion"),
    ({"inversion.steps": "0"}, "inversion.steps"),
    ({"attack.method": "inversion"}, "attack.method"),
    ({"generate.method": "gan"}, "generate.method"),
    ({"run.run_id": "../escape"}, "run.run_id"),
    ({"run.num_workers": "0"}, "run.num_workers"),
])
def test_validate_names_the_bad_setting(overrides, where):
    with pytest.raises(CccError, match=f"^{where}[:.]? "):
        load_config(JobConfig, overrides=overrides)


def test_read_yaml_errors_name_the_file(tmp_path):
    with pytest.raises(CccError, match="does not exist"):
        read_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(CccError, match="bad.yaml.*not valid YAML"):
        read_yaml(bad)
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(CccError, match="must hold a mapping of sections, not list"):
        read_yaml(listing)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_config(JobConfig, empty) == load_config(JobConfig)


def test_argparse_flags_round_trip_to_overrides(tmp_path):
    parser = argparse.ArgumentParser()
    for section, cls in section_classes().items():
        add_config_arguments(parser, cls, f"{section}.")
    help_text = parser.format_help()
    assert "--keep.confidence_bar" in help_text and "--run.storage_path" in help_text
    assert "(default: 0.99)" in help_text

    args = parser.parse_args(["--classifier.epochs", "3", "--data.name", "mnist", "--data.root", str(tmp_path),
                              "--run.use_gpu", "false"])
    overrides = overrides_from_args(args)
    # Only the flags actually passed become overrides, as the strings the user typed.
    assert overrides == {"classifier.epochs": "3", "data.name": "mnist", "data.root": str(tmp_path),
                         "run.use_gpu": "false"}
    config = load_config(JobConfig, overrides=overrides)
    assert config.classifier.epochs == 3
    assert config.data.name == "mnist" and config.data.root == str(tmp_path)
    assert config.run.use_gpu is False
    assert overrides_from_args(parser.parse_args([])) == {}


def test_write_yaml_read_yaml_round_trip(tmp_path):
    config = load_config(JobConfig, overrides={
        "data.name": "image_folder", "data.root": str(tmp_path), "data.image_size": "12",
        "classifier.arch": "resnet18", "classifier.dropout": "0.5", "inversion.conditioning": "soft",
        "keep.confidence_bar": "0.75", "run.run_id": "trial-7", "run.use_gpu": "true"})
    assert config != load_config(JobConfig)
    path = tmp_path / "written.yaml"
    path.write_text(dump_job(config))
    assert read_yaml(path) == job_to_tree(config)
    again = load_config(JobConfig, path)
    assert again == config
    assert dataclasses.asdict(again) == dataclasses.asdict(config)
