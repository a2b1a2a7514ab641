"""Counterfeit methods, one per file, behind the interface in `base.py`, in one registry.

Add a method: one file with a `CounterfeitMethod` subclass, and one `register_method` line below (or,
for a method that lives in another package, one `register_method` call where that package is imported).
"""

from __future__ import annotations

from ccc_ray.errors import CccError
from ccc_ray.methods.base import (
    ClassifierFn,
    CounterfeitMethod,
    MethodContext,
    MethodInfo,
    RealImageSearch,
    Sampled,
    SearchMethod,
    SearchResult,
    TrainedMethod,
    TrainingSchedule,
    real_batches,
    real_data_loader,
    step_generator,
)
from ccc_ray.methods.counterfactual import CounterfactualGAN
from ccc_ray.methods.cppn import CppnEvolution
from ccc_ray.methods.direct_encoding import DirectEncodingEvolution
from ccc_ray.methods.gradient_ascent import GradientAscent
from ccc_ray.methods.inversion import NetworkInversion
from ccc_ray.methods.real_pgd import RealPgd
from ccc_ray.methods.real_square import RealSquare
from ccc_ray.methods.substrate_gan import SubstrateGan

METHODS: dict[str, type[CounterfeitMethod]] = {}


def register_method(method_class: type[CounterfeitMethod]) -> type[CounterfeitMethod]:
    """Add a method to the registry (usable as a class decorator); its name must be new and a safe section name."""
    name = getattr(method_class, "name", None)
    if not isinstance(name, str) or not name.isidentifier():
        raise CccError(f"register_method: {method_class.__name__}.name must be an identifier, got {name!r}")
    if method_class.kind not in ("generator", "search", "joint"):
        raise CccError(f"register_method: {name}: kind must be generator, search or joint, got {method_class.kind!r}")
    known = METHODS.get(name)
    if known is not None and known is not method_class and known.__qualname__ != method_class.__qualname__:
        raise CccError(f"register_method: a method named {name!r} is already registered ({known.__qualname__})")
    METHODS[name] = method_class
    return method_class


def method_class(name: str, where: str = "method", kinds: tuple[str, ...] | None = None) -> type[CounterfeitMethod]:
    """The registered method called `name` (of one of `kinds`), or a CccError listing the ones there are."""
    choices = [n for n, cls in METHODS.items() if kinds is None or cls.kind in kinds]
    if name not in choices:
        what = "method" if kinds is None else f"{' or '.join(kinds)} method"
        raise CccError(f"{where}: unknown {what} {name!r}; registered: {', '.join(choices)}")
    return METHODS[name]


def method_infos() -> list[MethodInfo]:
    """One entry per registered method, for `ccc-ray methods` and the docs."""
    import dataclasses

    return [MethodInfo(name, cls.kind, cls.paper, cls.black_box, name,
                       [f.name for f in dataclasses.fields(cls.config_class)]) for name, cls in METHODS.items()]


# The registry: one line per method.
register_method(NetworkInversion)
register_method(DirectEncodingEvolution)
register_method(CppnEvolution)
register_method(GradientAscent)
register_method(CounterfactualGAN)
register_method(SubstrateGan)
register_method(RealPgd)
register_method(RealSquare)

__all__ = ["METHODS", "ClassifierFn", "CounterfeitMethod", "MethodContext", "MethodInfo", "RealImageSearch", "Sampled",
           "SearchMethod", "SearchResult", "TrainedMethod", "TrainingSchedule", "method_class", "method_infos",
           "real_batches", "real_data_loader", "register_method", "step_generator"]
