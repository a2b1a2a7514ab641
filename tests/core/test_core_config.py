"""ccc_ray/config.py and the job config: YAML, dotted overrides, argparse flags, validation errors."""

import argparse
import dataclasses

import pytest

from ccc_ray.config import (add_config_arguments, config_from_dict, config_to_dict, load_config,
                            overrides_from_args, read_yaml, write_yaml)
from ccc_ray.errors import CccError
from ccc_ray.job_config import JobConfig


@pytest.mark.parametrize("tree, key", [
    ({"dta": {}}, "dta"),
    ({"data": {"nmae": "digits"}}, "nmae"),
    ({"generate": {"treshold": 0.5}}, "treshold"),
])
def test_unknown_setting_is_an_error_naming_the_key(tree, key):
    with pytest.raises(CccError, match=f"unknown setting '{key}'"):
        config_from_dict(JobConfig, tree)


@pytest.mark.parametrize("tree, where", [
    ({"classifier": {"epochs": "many"}}, "classifier.epochs"),
    ({"classifier": {"epochs": 2.5}}, "classifier.epochs"),
    ({"classifier": {"epochs": True}}, "classifier.epochs"),
    ({"generate": {"threshold": "high"}}, "generate.threshold"),
    ({"generator": {"conditioning": "two_hot"}}, "generator.conditioning"),
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
    path.write_text("classifier:\n  epochs: 5\n  width: 8\ngenerate:\n  threshold: 0.9\n  seed: 2\n")
    config = load_config(JobConfig, path, {"classifier.epochs": "7", "generate.seed": "3", "data.split_seed": 4})
    assert config.classifier.epochs == 7  # the override wins over the file
    assert config.classifier.width == 8  # the file wins over the default
    assert config.generate.threshold == 0.9
    assert config.generate.seed == 3
    assert config.data.split_seed == 4
    assert config.classifier.hidden == JobConfig().classifier.hidden


def test_override_below_a_value_is_an_error(tmp_path):
    with pytest.raises(CccError, match="--data.name.x: 'name' is a value"):
        load_config(JobConfig, overrides={"data.name": "digits", "data.name.x": "1"})


@pytest.mark.parametrize("threshold", ["0", "-0.1", "1.5"])
def test_threshold_outside_zero_one_is_rejected(threshold):
    with pytest.raises(CccError, match=r"^generate\.threshold: must lie in \(0, 1\]"):
        load_config(JobConfig, overrides={"generate.threshold": threshold})


def test_threshold_of_one_is_accepted():
    assert load_config(JobConfig, overrides={"generate.threshold": "1"}).generate.threshold == 1.0


@pytest.mark.parametrize("overrides, where", [
    ({"data.name": "imagenet"}, "data.name"),
    ({"data.name": "mnist"}, "data.root"),
    ({"data.test_fraction": "1"}, "data.test_fraction"),
    ({"classifier.dropout": "1"}, "classifier.dropout"),
    ({"generator.kl_weight": "0", "generator.ce_weight": "0"}, "generator"),
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
    assert load_config(JobConfig, empty) == JobConfig()


def test_argparse_flags_round_trip_to_overrides(tmp_path):
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, JobConfig)
    help_text = parser.format_help()
    assert "--generate.threshold" in help_text and "--run.storage_path" in help_text
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
        "classifier.arch": "resnet18", "classifier.dropout": "0.5", "generator.conditioning": "soft",
        "generate.threshold": "0.75", "run.run_id": "trial-7", "run.use_gpu": "true"})
    assert config != JobConfig()
    path = tmp_path / "written.yaml"
    write_yaml(config, path)
    assert read_yaml(path) == config_to_dict(config)
    again = load_config(JobConfig, path)
    assert again == config
    assert dataclasses.asdict(again) == dataclasses.asdict(config)
