"""Typed configuration: dataclasses that load from YAML, take command-line overrides, and validate once.

A job config is a dataclass whose fields are section dataclasses (`data`, `classifier`, ...). The same
object goes unchanged to Ray workers and Tune trials. Field help lives in `metadata["help"]` so the
CLI's `--help` and the docs read from one place.

Overrides use the YAML path as the flag: `--data.name mnist` sets `data.name`.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, Mapping, TypeVar, Union, get_args, get_origin

import yaml

from ccc_ray.errors import CccError

ConfigT = TypeVar("ConfigT")


def option(default: Any, help: str, *, ge: float | None = None, gt: float | None = None,
           le: float | None = None, lt: float | None = None, **kwargs: Any) -> Any:
    """A dataclass field with a default, the help text the CLI prints, and its bounds (checked by
    `validate_config`, so no section writes its own range checks)."""
    metadata = {"help": help, "bounds": {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt))
                                          if v is not None}}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata, **kwargs)
    return dataclasses.field(default=default, metadata=metadata, **kwargs)


def _bounds_text(bounds: dict[str, float]) -> str:
    """The rule a value broke, in the words the messages have always used."""
    low = ("[", bounds["ge"]) if "ge" in bounds else ("(", bounds["gt"]) if "gt" in bounds else None
    high = ("]", bounds["le"]) if "le" in bounds else (")", bounds["lt"]) if "lt" in bounds else None
    if low and high:
        return f"must lie in {low[0]}{low[1]:g}, {high[1]:g}{high[0]}"
    if low:
        if low == ("(", 0):
            return "must be positive"
        return f"must be at least {low[1]:g}" if low[0] == "[" and low[1] != 0 else (
            "must be >= 0" if low[0] == "[" else f"must be > {low[1]:g}")
    return f"must be at most {high[1]:g}" if high[0] == "]" else f"must be below {high[1]:g}"


def check_bounds(config: Any, where: str = "") -> None:
    """Raise a CccError for the first field of `config` (one section) outside its declared bounds or choices."""
    hints = _field_types(type(config))
    for f in dataclasses.fields(config):
        bounds = f.metadata.get("bounds") if f.metadata else None
        value = getattr(config, f.name)
        if get_origin(hints.get(f.name)) is Literal and value not in get_args(hints[f.name]):
            choices = " or ".join(map(str, get_args(hints[f.name])))
            raise CccError(f"{where}{f.name}: must be {choices}, got {value!r}")
        if not bounds or value is None or isinstance(value, bool):
            continue
        values = value if isinstance(value, (list, tuple)) else [value]
        for item in values:
            ok = all((("ge" not in bounds) or item >= bounds["ge"], ("gt" not in bounds) or item > bounds["gt"],
                      ("le" not in bounds) or item <= bounds["le"], ("lt" not in bounds) or item < bounds["lt"]))
            if not ok:
                raise CccError(f"{where}{f.name}: {_bounds_text(bounds)}, got {item}")


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert a YAML or command-line value to the annotated type, or raise a CccError naming `where`."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null") and type(None) in args):
            if type(None) in args:
                return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except CccError as error:
                errors.append(str(error))
        raise CccError(errors[0] if errors else f"{where}: cannot be {value!r}")
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise CccError(f"{where}: {value!r} is not one of {', '.join(map(repr, choices))}")
        return value
    if origin in (list, tuple):
        (item_type, *_) = get_args(tp) or (Any,)
        if isinstance(value, str):
            value = [part for part in value.split(",") if part.strip() != ""]
        if not isinstance(value, (list, tuple)):
            raise CccError(f"{where}: expected a list, got {value!r}")
        items = [_coerce(item, item_type, f"{where}[{i}]") for i, item in enumerate(value)]
        return items if origin is list else tuple(items)
    if _is_dataclass_type(tp):
        if not isinstance(value, Mapping):
            raise CccError(f"{where}: expected a mapping of settings, got {value!r}")
        return config_from_dict(tp, value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "no", "0", "off"):
            return False
        raise CccError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise CccError(f"{where}: expected an integer, got {value!r}")
        try:
            as_float = float(value)
        except (TypeError, ValueError):
            raise CccError(f"{where}: expected an integer, got {value!r}") from None
        if not as_float.is_integer():
            raise CccError(f"{where}: expected an integer, got {value!r}")
        return int(as_float)
    if tp is float:
        if isinstance(value, bool):
            raise CccError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise CccError(f"{where}: expected a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, (dict, list)):
            raise CccError(f"{where}: expected text, got {value!r}")
        return str(value)
    raise TypeError(f"unsupported config type {tp!r} at {where}")


def config_from_dict(cls: type[ConfigT], data: Mapping[str, Any], where: str = "config") -> ConfigT:
    """Build `cls` from a nested mapping; unknown keys are errors, missing keys take defaults."""
    hints = _field_types(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise CccError(f"{where}: unknown setting {unknown[0]!r}; known settings are {', '.join(sorted(names))}")
    kwargs = {name: _coerce(value, hints[name], f"{where}.{name}" if where != "config" else name)
              for name, value in data.items()}
    return cls(**kwargs)


def config_to_dict(config: Any) -> dict[str, Any]:
    """Plain nested dict (YAML- and JSON-safe) of a config dataclass."""
    return dataclasses.asdict(config)


def validate_config(config: Any, where: str = "") -> None:
    """Check every section's declared bounds, then call its `validate()` for rules across fields (depth first)."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            validate_config(value, f"{where}{f.name}.")
        elif isinstance(value, dict):
            for name, section in value.items():
                if dataclasses.is_dataclass(section):
                    validate_config(section, f"{name}.")
    check_bounds(config, where)
    validate = getattr(config, "validate", None)
    if callable(validate):
        validate()


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CccError(f"config file {str(path)!r} does not exist")
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise CccError(f"config file {str(path)!r} is not valid YAML: {str(error).splitlines()[0]}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise CccError(f"config file {str(path)!r} must hold a mapping of sections, not {type(loaded).__name__}")
    return loaded


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise CccError(f"--{dotted}: {part!r} is a value, not a section")
        node = child
    node[leaf] = value


def load_config(cls: type[ConfigT], yaml_path: str | Path | None = None,
                overrides: Mapping[str, Any] | None = None) -> ConfigT:
    """Defaults, then the YAML file, then dotted overrides; validated once at the end."""
    tree: dict[str, Any] = read_yaml(yaml_path) if yaml_path else {}
    for dotted, value in (overrides or {}).items():
        _set_dotted(tree, dotted, value)
    config = config_from_dict(cls, tree)
    validate_config(config)
    return config


def write_yaml(config: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))


# ---------------------------------------------------------------- command line

def _type_label(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "{" + ",".join(map(str, get_args(tp))) + "}"
    if origin in (Union, types.UnionType):
        return "|".join(_type_label(a) for a in get_args(tp) if a is not type(None)) + "|none"
    if origin in (list, tuple):
        return "A,B,..."
    return getattr(tp, "__name__", str(tp)).upper()


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, prefix: str = "") -> None:
    """One `--section.field` flag per leaf field, with its help and default; values stay strings here."""
    hints = _field_types(cls)
    group = parser.add_argument_group(prefix.rstrip(".") or "settings") if prefix else parser
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        dotted = f"{prefix}{f.name}"
        if _is_dataclass_type(tp):
            add_config_arguments(parser, tp, f"{dotted}.")
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        group.add_argument(f"--{dotted}", dest=f"cfg:{dotted}", metavar=_type_label(tp), default=None,
                           help=f"{f.metadata.get('help', '')} (default: {default})".replace("%", "%%"))


def overrides_from_args(args: argparse.Namespace) -> dict[str, str]:
    """The `--section.field` flags the user actually passed."""
    return {key[4:]: value for key, value in vars(args).items() if key.startswith("cfg:") and value is not None}
