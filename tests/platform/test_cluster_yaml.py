"""cluster.yaml can be launched: it passes the checks `ray up` runs before touching the cloud, the head's
setup installs what the head runs (Ray with its autoscaler and dashboard, boto3 for the AWS provider, this
project) into the environment whose `ray` starts it, and every node has an IAM instance profile for the
bucket.

The checks are Ray's own: `prepare_config` (merges Ray's AWS defaults and the setup commands, as `ray up`
does) and `validate_config` (ray/autoscaler/ray-schema.json plus its cross-field rules).
"""

from __future__ import annotations

import copy
import re
import shlex
import tomllib
from pathlib import Path, PurePosixPath

import pytest
import yaml

jsonschema = pytest.importorskip("jsonschema", reason="Ray's config validation needs jsonschema (ray[default])")
from packaging.requirements import InvalidRequirement, Requirement  # noqa: E402
from ray.autoscaler._private.util import prepare_config, validate_config  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
PROFILE_ARN = re.compile(r"^arn:aws:iam::[^:]+:instance-profile/[\w+=,.@/-]+$")


def load_cluster_yaml() -> dict:
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


def as_ray_up_sees_it(config: dict) -> dict:
    """The config after the steps of `ray up` that need no cloud account: defaults merged, then validated."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def project_requires_ray_default() -> bool:
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    return any(Requirement(d).name == "ray" and "default" in Requirement(d).extras for d in dependencies)


def install_problems(config: dict, node: str) -> list[str]:
    """What the `node` ("head" or "worker") setup fails to install where its `ray start` runs; empty if nothing."""
    prepared = as_ray_up_sees_it(config)
    home = PurePosixPath("/home") / prepared["auth"]["ssh_user"]
    starts = [shlex.split(c) for c in prepared[f"{node}_start_ray_commands"] if " start " in f" {c} "]
    ray_bin = PurePosixPath(starts[0][0]).parent
    (project,) = (PurePosixPath(target.replace("~", str(home), 1)) for target, source in
                  prepared["file_mounts"].items() if source in (".", "./"))
    packages, editable, problems = {}, set(), []
    for command in prepared[f"{node}_setup_commands"]:
        tokens = shlex.split(command)
        if not tokens or not tokens[0].endswith("pip") or "install" not in tokens:
            continue
        if PurePosixPath(tokens[0]).parent != ray_bin:
            problems.append(f"{command!r} installs with a pip outside {ray_bin}, where `ray start` runs")
            continue
        arguments = tokens[tokens.index("install") + 1:]
        for before, argument in zip([None, *arguments], arguments):
            if argument.startswith("-"):
                continue
            path = PurePosixPath(argument.replace("~", str(home), 1))
            if before in ("-e", "--editable") or path == project:
                editable.add(path)
                continue
            try:
                requirement = Requirement(argument)
            except InvalidRequirement:
                continue
            packages[requirement.name] = requirement
    if project not in editable:
        problems.append(f"the project ({project}, mounted from this repository) is not installed into {ray_bin}")
    ray = packages.get("ray")
    through_project = project in editable and project_requires_ray_default()
    if not (ray is not None and "default" in ray.extras) and not through_project:
        problems.append(f"ray[default] (the autoscaler and dashboard) is not installed into {ray_bin}")
    if node == "head" and "boto3" not in packages:
        problems.append(f"boto3 (Ray's AWS provider launches workers with it) is not installed into {ray_bin}")
    return problems


def test_cluster_yaml_passes_ray_up_validation():
    prepared = as_ray_up_sees_it(load_cluster_yaml())
    assert prepared["provider"]["type"] == "aws"
    assert set(prepared["available_node_types"]) == {"head", "gpu_worker"}


def test_the_head_installs_what_it_runs():
    assert install_problems(load_cluster_yaml(), "head") == []


def test_workers_install_the_project_and_ray():
    assert install_problems(load_cluster_yaml(), "worker") == []


def test_every_node_has_an_instance_profile_for_the_bucket():
    for name, node_type in load_cluster_yaml()["available_node_types"].items():
        profile = node_type["node_config"].get("IamInstanceProfile", {})
        assert PROFILE_ARN.match(profile.get("Arn", "")), f"node type {name!r} has no IAM instance profile ARN"
    profile_lines = [line for line in (REPO / "cluster.yaml").read_text().splitlines() if "instance-profile/" in line]
    assert len(profile_lines) == 2 and all("# CHANGE" in line for line in profile_lines)  # placeholders, marked


def test_the_checks_catch_what_was_wrong_before():
    """The shapes cluster.yaml had before issue 16 fail, so the tests above can fail."""
    config = load_cluster_yaml()
    without_head_setup = {key: value for key, value in config.items() if key != "head_setup_commands"}
    problems = install_problems(without_head_setup, "head")  # Ray's default then runs a bare `pip install boto3`
    assert any("pip outside" in problem and "boto3" in problem for problem in problems)
    assert any(problem.startswith("boto3") for problem in problems)

    bare_pip = copy.deepcopy(config)
    bare_pip["setup_commands"] = [c.replace("~/ccc-venv/bin/pip", "pip") for c in config["setup_commands"]]
    assert any("project" in problem for problem in install_problems(bare_pip, "worker"))

    misspelled = {**config, "setup_comands": config["setup_commands"]}
    with pytest.raises(jsonschema.ValidationError, match="setup_comands"):
        as_ray_up_sees_it(misspelled)
