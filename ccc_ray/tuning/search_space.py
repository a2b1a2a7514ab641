"""Search spaces in YAML, keyed by the dotted config names the CLI uses, checked before any trial starts.

    inversion.kl_weight: {type: loguniform, low: 0.3, high: 3.0}
    inversion.cosine_weight: {type: uniform, low: 0.0, high: 0.5}
    inversion.conditioning: {type: choice, values: [one_hot, soft]}

Every method keeps its default space next to its file: `ccc_ray/methods/<name>-search.yaml`.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from pathlib import Path
from typing import Any

from ccc_ray.config import read_yaml
from ccc_ray.errors import CccError
from ccc_ray.job import JobConfig, apply_overrides, section_classes
from ccc_ray.methods import method_class

KINDS = ("uniform", "loguniform", "choice", "randint")


def default_space_file(method: str) -> Path:
    """The method's own space: `<name>-search.yaml` beside the file that defines the method."""
    return Path(inspect.getfile(method_class(method, "generate.method"))).with_name(f"{method}-search.yaml")


def _field_type(dotted: str) -> Any:
    section, _, name = dotted.partition(".")
    classes = section_classes()
    if section not in classes or not name:
        raise CccError(f"tune.search_space: unknown parameter {dotted!r}; use a dotted config name such as "
                       "inversion.kl_weight")
    inner = {f.name: f for f in dataclasses.fields(classes[section])}
    if name not in inner:
        raise CccError(f"tune.search_space: unknown parameter {dotted!r}; {section} has "
                       f"{', '.join(sorted(inner))}")
    return inner[name]


def load_search_space(path: str | Path) -> dict[str, dict]:
    """{dotted name: spec} from YAML, every name a real config field and every range sensible."""
    raw = read_yaml(path)
    if not raw:
        raise CccError(f"tune.search_space: {str(path)!r} is empty; give at least one parameter to search")
    if not isinstance(raw, dict):
        raise CccError(f"tune.search_space: {str(path)!r} must map parameter names to ranges")
    space = {}
    for dotted, spec in raw.items():
        _field_type(dotted)
        if not isinstance(spec, dict) or spec.get("type") not in KINDS:
            raise CccError(f"tune.search_space: {dotted}: give {{type: {' | '.join(KINDS)}, ...}}, got {spec!r}")
        kind = spec["type"]
        if kind == "choice":
            values = spec.get("values")
            if not isinstance(values, list) or not values:
                raise CccError(f"tune.search_space: {dotted}: choice needs a non-empty list `values`")
        else:
            low, high = spec.get("low"), spec.get("high")
            if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in (low, high)):
                raise CccError(f"tune.search_space: {dotted}: {kind} needs finite numbers `low` and `high`")
            if low >= high:
                raise CccError(f"tune.search_space: {dotted}: low {low} must be below high {high}")
            if low < 0 and (dotted.endswith("weight") or dotted.endswith("learning_rate")):
                raise CccError(f"tune.search_space: {dotted}: a weight range must not be negative ({low}..{high})")
            if kind == "loguniform" and low <= 0:
                raise CccError(f"tune.search_space: {dotted}: loguniform needs low > 0, got {low}")
        space[dotted] = spec
    # Every corner of the space must make a valid config: check the low and high ends now.
    for end in ("low", "high"):
        overrides = {k: (s["values"][0] if s["type"] == "choice" else s[end]) for k, s in space.items()}
        apply_overrides(JobConfig(), overrides)
    return space
